/**
 * The job state machine (DESIGN.md): queued → placed → booting → running → succeeded | failed | cancelled |
 * timed_out | lost. A lost job that had not started running goes back to queued as a new attempt.
 * Pure: one const object of states, one transition function, an exhaustive `never` check.
 */
import { KilnError } from './errors.ts';

export const JOB_STATES = {
  queued: 'queued',
  placed: 'placed',
  booting: 'booting',
  running: 'running',
  succeeded: 'succeeded',
  failed: 'failed',
  cancelled: 'cancelled',
  timed_out: 'timed_out',
  lost: 'lost',
} as const;
export type JobState = keyof typeof JOB_STATES;
export const JOB_STATE_LIST = Object.keys(JOB_STATES) as JobState[];

export type JobEvent =
  | { type: 'place'; hostId: string }
  | { type: 'boot' }
  | { type: 'start' }
  | { type: 'exit'; exitCode: number }
  | { type: 'fail'; code: string }
  | { type: 'cancel' }
  | { type: 'time_out' }
  | { type: 'lose'; reason: string }
  | { type: 'requeue' };

export function isTerminal(s: JobState): boolean {
  switch (s) {
    case 'succeeded':
    case 'failed':
    case 'cancelled':
    case 'timed_out':
    case 'lost':
      return true;
    case 'queued':
    case 'placed':
    case 'booting':
    case 'running':
      return false;
    default:
      return assertNever(s);
  }
}

/** States in which a job holds capacity on a host. */
export const ACTIVE_STATES: readonly JobState[] = ['placed', 'booting', 'running'];
export const TERMINAL_STATES: readonly JobState[] = ['succeeded', 'failed', 'cancelled', 'timed_out', 'lost'];

/** A lost job may be retried only if its command never started. */
export function mayRequeue(lastActive: JobState): boolean {
  return lastActive === 'placed' || lastActive === 'booting';
}

/**
 * The next state for `event` in state `from`, or a KilnError `job.bad_transition`. Terminal states accept
 * nothing except lost → queued (requeue of work that never ran).
 */
export function nextJobState(from: JobState, event: JobEvent): JobState {
  const bad = (): never => {
    throw new KilnError('job.bad_transition', `a ${from} job cannot take event "${event.type}"`, { kind: 'internal' });
  };
  switch (event.type) {
    case 'place':
      return from === 'queued' ? 'placed' : bad();
    case 'boot':
      return from === 'placed' ? 'booting' : bad();
    case 'start':
      return from === 'placed' || from === 'booting' ? 'running' : bad();
    case 'exit':
      return from === 'placed' || from === 'booting' || from === 'running'
        ? event.exitCode === 0
          ? 'succeeded'
          : 'failed'
        : bad();
    case 'fail':
      return from === 'placed' || from === 'booting' || from === 'running' ? 'failed' : bad();
    case 'cancel':
      return isTerminal(from) ? bad() : 'cancelled';
    case 'time_out':
      return from === 'placed' || from === 'booting' || from === 'running' ? 'timed_out' : bad();
    case 'lose':
      return from === 'placed' || from === 'booting' || from === 'running' ? 'lost' : bad();
    case 'requeue':
      return from === 'lost' ? 'queued' : bad();
    default:
      return assertNever(event);
  }
}

export function canTransition(from: JobState, event: JobEvent): boolean {
  try {
    nextJobState(from, event);
    return true;
  } catch {
    return false;
  }
}

export function assertNever(x: never): never {
  throw new Error(`unexpected value ${JSON.stringify(x)}`);
}
