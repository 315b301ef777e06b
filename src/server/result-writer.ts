/**
 * Stores agents' job results through a group commit (two statements per batch, transitionJobs; each batch
 * takes every result that arrived while the previous one ran). Before each batch, the phases and logs
 * received earlier are stored, so a job is never final before its output.
 */
import type { JobResultMsg } from '../core/agent-protocol.ts';
import type { Job } from '../core/job.ts';
import type { JobState } from '../core/job-state.ts';
import { transitionJobs } from '../store/jobs.ts';
import type { ServerContext } from './context.ts';
import { makeGroupCommit } from './group-commit.ts';
import { resultEvent } from './result-event.ts';

export interface ResultWriter {
  /** Stores a result from host `hostId`; resolves with the change it made (undefined: none applied). */
  apply(hostId: number, r: JobResultMsg): Promise<{ job: Job; from: JobState } | undefined>;
}

export function makeResultWriter(ctx: ServerContext, before: () => Promise<void>): ResultWriter {
  type Item = { hostId: number; r: JobResultMsg };
  const write = makeGroupCommit(
    async (batch: Item[]) => {
      await before();
      return transitionJobs(
        ctx.store.db,
        batch.map((it) => ({
          jobId: it.r.jobId,
          attempt: it.r.attempt,
          choose: (job: Job) => (job.hostId === it.hostId ? resultEvent(it.r, job) : undefined),
        })),
      );
    },
    // transitionJobs is not one atomic statement (rows changed meanwhile fall back one by one), so a failed
    // batch fails its callers rather than running again over what it already stored.
    { maxInFlight: 1, maxItems: 1000, retryAlone: false },
  );
  return {
    async apply(hostId, r) {
      const [out] = await write([{ hostId, r }]);
      return out;
    },
  };
}
