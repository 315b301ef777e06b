/**
 * Stores agents' job results through a group commit (each batch takes every result that arrived while the
 * previous one ran). VMs that exited, the usual end, are recorded in one statement (`recordExits`); other
 * results depend on the stored job (cancellation, timeouts) and take a read and an optimistic update
 * (`transitionJobs`). Before each batch, the phases and logs received earlier are stored, so a job is never
 * final before its output.
 */
import type { JobResultMsg } from '../../core/agent-protocol.ts';
import type { Job } from '../../core/job.ts';
import { recordExits, transitionJobs, type ExitChange } from '../../store/jobs.ts';
import type { ServerContext } from '../context.ts';
import { makeGroupCommit } from '../group-commit.ts';
import { exitEvent, resultEvent } from './result-event.ts';

/** What a stored result changed: the job's new state (what its events and logs need) and the state it left. */
export type ResultChange = ExitChange;

export interface ResultWriter {
  /** Stores a result from host `hostId`; resolves with the change it made (undefined: none applied). */
  apply(hostId: number, r: JobResultMsg): Promise<ResultChange | undefined>;
}

export function makeResultWriter(ctx: ServerContext, before: () => Promise<void>): ResultWriter {
  type Item = { hostId: number; r: JobResultMsg };
  const write = makeGroupCommit(
    async (batch: Item[]): Promise<(ResultChange | undefined)[]> => {
      await before();
      const out: (ResultChange | undefined)[] = batch.map(() => undefined);
      const exits: { i: number; exitCode: number }[] = [];
      const others: number[] = [];
      batch.forEach((it, i) => {
        const e = exitEvent(it.r);
        if (e) exits.push({ i, exitCode: e.fields.exitCode });
        else others.push(i);
      });
      const recorded = await recordExits(
        ctx.store.db,
        exits.map(({ i, exitCode }) => ({ jobId: batch[i]!.r.jobId, attempt: batch[i]!.r.attempt, hostId: batch[i]!.hostId, exitCode })),
      );
      exits.forEach(({ i }, k) => (out[i] = recorded[k]));
      const changed = await transitionJobs(
        ctx.store.db,
        others.map((i) => {
          const it = batch[i]!;
          return { jobId: it.r.jobId, attempt: it.r.attempt, choose: (job: Job) => (job.hostId === it.hostId ? resultEvent(it.r, job) : undefined) };
        }),
      );
      others.forEach((i, k) => (out[i] = changed[k]));
      return out;
    },
    // Neither half is retried as a whole: a batch that fails after storing part of it fails its callers
    // rather than running again over what it already stored.
    { maxInFlight: 1, maxItems: 1000, retryAlone: false },
  );
  return {
    async apply(hostId, r) {
      const [out] = await write([{ hostId, r }]);
      return out;
    },
  };
}
