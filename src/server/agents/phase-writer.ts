/**
 * Stores agents' phase reports (booting, running) through a group commit: one statement at a time, each
 * taking every report that arrived while the previous one ran (see group-commit.ts).
 */
import type { PhaseUpdate } from '../../store/jobs.ts';
import type { ServerContext } from '../context.ts';
import { makeGroupCommit } from '../group-commit.ts';
import type { JobCommands } from '../jobs/job-commands.ts';

export interface PhaseWriter {
  push(u: PhaseUpdate): void;
  /** Resolves once everything pushed so far is stored (results flush this first, to keep order). */
  flush(): Promise<void>;
}

export function makePhaseWriter(ctx: ServerContext, jobs: JobCommands): PhaseWriter {
  const pending = new Set<Promise<unknown>>();
  const write = makeGroupCommit(
    async (batch: PhaseUpdate[]) => {
      await jobs.applyPhases(batch);
      return batch.map(() => undefined);
    },
    { maxInFlight: 1, maxItems: 2000 },
  );
  return {
    push(u) {
      const p = write([u]).catch((e: unknown) => ctx.log.error({ err: e, jobId: u.jobId }, 'could not store a job phase'));
      pending.add(p);
      void p.finally(() => pending.delete(p));
    },
    async flush() {
      await Promise.all([...pending]);
    },
  };
}
