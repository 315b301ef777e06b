/**
 * The GitHub part's view of kiln jobs (its runner VMs): submit one, cancel one, and remove the JIT config (a
 * credential) from a VM's stored env once the runner used it or never will. Every write goes through the
 * server's one door for job changes (server/jobs/job-commands.ts); reads come from the store.
 */
import type { Job, JobSpec } from '../../core/job.ts';
import { getJob, jobStatuses } from '../../store/jobs.ts';
import type { Db, Tx } from '../../store/store.ts';
import type { ServerContext } from '../context.ts';
import type { JobCommands } from '../jobs/job-commands.ts';

export const RUNNER_ENV = 'KILN_RUNNER_JITCONFIG';

export interface RunnerVmWrites {
  submit(spec: JobSpec): Promise<Job>;
  cancel(kilnJobId: number | null, reason: string): Promise<void>;
  scrubJitConfig(q: Db | Tx, kilnJobId: number | null): Promise<void>;
  get(q: Db | Tx, kilnJobId: number): Promise<Job | undefined>;
  statuses(ids: number[]): Promise<Awaited<ReturnType<typeof jobStatuses>>>;
}

export function makeRunnerVmWrites(ctx: ServerContext, jobs: JobCommands): RunnerVmWrites {
  const db = ctx.store.db;
  return {
    submit: (spec) => jobs.submitRunnerJob(spec),
    async cancel(kilnJobId, reason) {
      if (kilnJobId === null) return;
      await jobs.cancel(kilnJobId, reason);
    },
    async scrubJitConfig(q, kilnJobId) {
      if (kilnJobId === null) return;
      await jobs.scrubSecretEnv(kilnJobId, RUNNER_ENV, q);
    },
    get: (q, id) => getJob(q, id),
    statuses: (ids) => jobStatuses(db, ids),
  };
}
