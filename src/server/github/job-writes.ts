/**
 * Every write the GitHub part makes to kiln jobs (its runner VMs), in one place so that it can move behind
 * the server's single door for job changes when that lands: submit a runner VM, cancel one, and remove the
 * JIT config (a credential) from a VM's stored env once the runner used it or never will.
 */
import { sql } from 'kysely';
import type { Job, JobSpec } from '../../core/job.ts';
import { getJob, insertJobs, jobStatuses, requestCancel } from '../../store/jobs.ts';
import type { Db, Tx } from '../../store/store.ts';
import { KilnError } from '../../core/errors.ts';
import type { ServerContext } from '../context.ts';

export const RUNNER_ENV = 'KILN_RUNNER_JITCONFIG';

export interface RunnerVmWrites {
  submit(spec: JobSpec): Promise<Job>;
  cancel(kilnJobId: number | null, reason: string): Promise<void>;
  scrubJitConfig(q: Db | Tx, kilnJobId: number | null): Promise<void>;
  get(q: Db | Tx, kilnJobId: number): Promise<Job | undefined>;
  statuses(ids: number[]): Promise<Awaited<ReturnType<typeof jobStatuses>>>;
}

export function makeRunnerVmWrites(ctx: ServerContext, stop: (hostId: number, jobId: number, attempt: number, reason: string) => boolean): RunnerVmWrites {
  const db = ctx.store.db;
  return {
    async submit(spec) {
      const [job] = await insertJobs(db, [spec]);
      if (!job) throw new KilnError('github.submit_failed', 'the runner VM could not be queued', { kind: 'internal' });
      ctx.events.emit('job.submitted', { job });
      return job;
    },
    async cancel(kilnJobId, reason) {
      if (kilnJobId === null) return;
      const r = await requestCancel(db, kilnJobId);
      if (!r) return;
      if (r.job.state === 'cancelled' && r.stopHost === null) ctx.events.emit('job.state', { job: r.job, from: 'queued', to: 'cancelled' });
      if (r.stopHost !== null) stop(r.stopHost, r.job.id, r.job.attempt, reason);
    },
    async scrubJitConfig(q, kilnJobId) {
      if (kilnJobId === null) return;
      await sql`UPDATE jobs SET env = env - ${RUNNER_ENV}::text WHERE id = ${kilnJobId}`.execute(q);
    },
    get: (q, id) => getJob(q, id),
    statuses: (ids) => jobStatuses(db, ids),
  };
}
