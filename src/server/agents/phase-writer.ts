/**
 * Stores agents' phase reports (booting, running) through a group commit: one statement at a time, each
 * taking every report that arrived while the previous one ran (see group-commit.ts). Start requests (the
 * start lease) go through the same commit: a start is granted once the job is stored as running on that
 * host and attempt (now, or by an earlier request whose answer was lost).
 */
import type { PhaseUpdate } from '../../store/jobs.ts';
import type { ServerContext } from '../context.ts';
import { makeGroupCommit } from '../group-commit.ts';
import type { JobCommands } from '../jobs/job-commands.ts';

export interface PhaseWriter {
  push(u: PhaseUpdate): void;
  /** Records a start (phase running); resolves true when the job is stored as running on u.hostId, u.attempt. */
  start(u: PhaseUpdate): Promise<boolean>;
  /** Resolves once everything pushed so far is stored (results flush this first, to keep order). */
  flush(): Promise<void>;
}

export function makePhaseWriter(ctx: ServerContext, jobs: JobCommands): PhaseWriter {
  const pending = new Set<Promise<unknown>>();
  // On PostgreSQL two statements may run at once, so a start (whose agent waits for the answer) need not
  // wait for a whole statement already running. Each statement takes its jobs in id order (applyPhases), so
  // two at once lock rows in the same order; should they deadlock all the same, PostgreSQL aborts one whole
  // (one statement, nothing half-stored) and the group commit runs its callers' parts again alone.
  // The embedded store runs one statement at a time anyway.
  const write = makeGroupCommit(
    async (batch: PhaseUpdate[]): Promise<boolean[]> => jobs.applyPhases(batch),
    { maxInFlight: ctx.store.kind === 'pglite' ? 1 : 2, maxItems: 2000 },
  );
  const track = <T>(p: Promise<T>): Promise<T> => {
    pending.add(p);
    void p.finally(() => pending.delete(p)).catch(() => undefined);
    return p;
  };
  // Test-only (KILN_TEST_HOLD_STARTS): a job's running record is never stored nor answered, so a test can
  // SIGKILL the server between a job's start and its record, at a moment it can see in the log.
  const hold = (u: PhaseUpdate) => ctx.log.warn({ jobId: u.jobId, attempt: u.attempt }, `test hook: holding the start of job ${u.jobId}`);
  return {
    push(u) {
      if (u.phase === 'running' && ctx.options.testHoldStarts) return hold(u);
      void track(write([u]).catch((e: unknown) => ctx.log.error({ err: e, jobId: u.jobId }, 'could not store a job phase')));
    },
    start(u) {
      if (ctx.options.testHoldStarts) {
        hold(u);
        return new Promise<boolean>(() => {});
      }
      return track(write([u]).then(([ok]) => ok === true));
    },
    async flush() {
      await Promise.allSettled([...pending]);
    },
  };
}
