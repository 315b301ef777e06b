/**
 * Stores agents' phase reports (booting, running) through a group commit: one statement at a time, each
 * taking every report that arrived while the previous one ran (see group-commit.ts).
 */
import { applyPhases, type PhaseUpdate } from '../../store/jobs.ts';
import type { ServerContext } from '../context.ts';
import { makeGroupCommit } from '../group-commit.ts';

export interface PhaseWriter {
  push(u: PhaseUpdate): void;
  /** Resolves once everything pushed so far is stored (results flush this first, to keep order). */
  flush(): Promise<void>;
}

export function makePhaseWriter(ctx: ServerContext): PhaseWriter {
  const pending = new Set<Promise<unknown>>();
  const write = makeGroupCommit(
    async (batch: PhaseUpdate[]) => {
      for (const c of await applyPhases(ctx.store.db, batch)) {
        const job = { id: c.id, tenant: c.tenant, attempt: c.attempt };
        if (c.booted) ctx.events.emit('job.state', { job, from: 'placed', to: 'booting' });
        ctx.events.emit('job.state', { job, from: c.booted ? 'booting' : c.from, to: c.state });
      }
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
