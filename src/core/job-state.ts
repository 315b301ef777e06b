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

/** Whether a job in state `s` holds capacity on a host (one of ACTIVE_STATES). */
export function holdsHost(s: JobState): boolean {
  return s === 'placed' || s === 'booting' || s === 'running';
}

/** A lost job may be retried only if its command never started. */
export function mayRequeue(lastActive: JobState): boolean {
  return lastActive === 'placed' || lastActive === 'booting';
}

/**
 * The next state for `event` in state `from`, or undefined when the event is not allowed there. Terminal
 * states accept nothing except lost → queued (requeue of work that never ran).
 */
export function transitionTarget(from: JobState, event: JobEvent): JobState | undefined {
  const live = from === 'placed' || from === 'booting' || from === 'running';
  switch (event.type) {
    case 'place':
      return from === 'queued' ? 'placed' : undefined;
    case 'boot':
      return from === 'placed' ? 'booting' : undefined;
    case 'start':
      return from === 'placed' || from === 'booting' ? 'running' : undefined;
    case 'exit':
      return live ? (event.exitCode === 0 ? 'succeeded' : 'failed') : undefined;
    case 'fail':
      return live ? 'failed' : undefined;
    case 'cancel':
      return isTerminal(from) ? undefined : 'cancelled';
    case 'time_out':
      return live ? 'timed_out' : undefined;
    case 'lose':
      return live ? 'lost' : undefined;
    case 'requeue':
      return from === 'lost' ? 'queued' : undefined;
    default:
      return assertNever(event);
  }
}

/** The next state for `event` in state `from`, or a KilnError `job.bad_transition`. */
export function nextJobState(from: JobState, event: JobEvent): JobState {
  const to = transitionTarget(from, event);
  if (to === undefined) throw new KilnError('job.bad_transition', `a ${from} job cannot take event "${event.type}"`, { kind: 'internal' });
  return to;
}

/** Whether `event` is allowed in state `from` (no exception: schedulers ask this thousands of times a second). */
export function canTransition(from: JobState, event: JobEvent): boolean {
  return transitionTarget(from, event) !== undefined;
}

export function assertNever(x: never): never {
  throw new Error(`unexpected value ${JSON.stringify(x)}`);
}
