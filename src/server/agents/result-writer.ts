/**
 * Stores agents' job results through a group commit (each batch takes every result that arrived while the
 * previous one ran). VMs that exited, the usual end, are recorded in one statement (the job door's
 * `storeResults`); other results depend on the stored job (cancellation, timeouts) and take a read and an
 * optimistic update. Before each batch, the phases and logs received earlier are stored, so a job is never
 * final before its output.
 */
import type { JobResultMsg } from '../../core/agent-protocol.ts';
import { makeGroupCommit } from '../group-commit.ts';
import type { JobCommands, ResultChange } from '../jobs/job-commands.ts';

export type { ResultChange };

export interface ResultWriter {
  /** Stores a result from host `hostId`; resolves with the change it made (undefined: none applied). */
  apply(hostId: number, r: JobResultMsg): Promise<ResultChange | undefined>;
}

export function makeResultWriter(jobs: JobCommands, before: () => Promise<void>): ResultWriter {
  type Item = { hostId: number; r: JobResultMsg };
  const write = makeGroupCommit(
    async (batch: Item[]): Promise<(ResultChange | undefined)[]> => {
      await before();
      return jobs.storeResults(batch);
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
