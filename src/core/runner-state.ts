/**
 * The GitHub runner state machine (docs/ARCHITECTURE.md, "GitHub Actions"): a JIT runner kiln registers and
 * runs in a VM.
 *
 *   pending ──registered──▶ starting ──came_online──▶ online ──took_job──▶ busy
 *      │                       │  └────────took_job──────────────────────▲ │
 *      └──────── retire / ended: every live state ──▶ stopping ──ended──▶ gone
 *
 * pending: the name is stored, GitHub not yet asked (a lost answer leaves this row for the 409 path).
 * starting: registered on GitHub, its VM queued or booting. online: idle on GitHub. busy: took a job.
 * stopping: being taken out (registration, then VM). gone: ended; kept for the record.
 * A stopping runner that GitHub reports busy (422 on delete) is kept as busy while its VM lives.
 * Pure: one const object of states, one transition function, an exhaustive `never` check.
 */
import { KilnError } from './errors.ts';
import { assertNever } from './job-state.ts';

export const RUNNER_STATES = {
  pending: 'pending',
  starting: 'starting',
  online: 'online',
  busy: 'busy',
  stopping: 'stopping',
  gone: 'gone',
} as const;
export type RunnerState = keyof typeof RUNNER_STATES;
export const RUNNER_STATE_LIST = Object.keys(RUNNER_STATES) as RunnerState[];

export type RunnerEvent =
  | { type: 'registered' }
  | { type: 'came_online' }
  | { type: 'took_job' }
  | { type: 'retire'; reason: string }
  | { type: 'ended'; reason?: string };

/** Live: holds (or is about to hold) a registration or a VM. */
export function isLiveRunner(s: RunnerState): boolean {
  switch (s) {
    case 'pending':
    case 'starting':
    case 'online':
    case 'busy':
    case 'stopping':
      return true;
    case 'gone':
      return false;
    default:
      return assertNever(s);
  }
}

/** Available: may still take a queued job (not yet busy, not being taken out). */
export function isAvailableRunner(s: RunnerState): boolean {
  switch (s) {
    case 'pending':
    case 'starting':
    case 'online':
      return true;
    case 'busy':
    case 'stopping':
    case 'gone':
      return false;
    default:
      return assertNever(s);
  }
}

export const LIVE_RUNNER_STATES: readonly RunnerState[] = RUNNER_STATE_LIST.filter(isLiveRunner);
export const AVAILABLE_RUNNER_STATES: readonly RunnerState[] = RUNNER_STATE_LIST.filter(isAvailableRunner);

/** The next state for `event` in state `from`, or undefined when the event is not allowed there. */
export function runnerTransitionTarget(from: RunnerState, event: RunnerEvent): RunnerState | undefined {
  switch (event.type) {
    case 'registered':
      return from === 'pending' ? 'starting' : undefined;
    case 'came_online':
      return from === 'starting' || from === 'online' ? 'online' : undefined;
    case 'took_job':
      // From stopping: the delete was refused (busy on GitHub) while the VM lives, so the runner is kept.
      return from === 'gone' ? undefined : 'busy';
    case 'retire':
      return from === 'gone' ? undefined : 'stopping';
    case 'ended':
      return 'gone';
    default:
      return assertNever(event);
  }
}

/** The next state for `event` in state `from`, or a KilnError `github.bad_runner_transition`. */
export function nextRunnerState(from: RunnerState, event: RunnerEvent): RunnerState {
  const to = runnerTransitionTarget(from, event);
  if (to === undefined) throw new KilnError('github.bad_runner_transition', `a ${from} runner cannot take event "${event.type}"`, { kind: 'internal' });
  return to;
}

export function isRunnerState(s: string): s is RunnerState {
  return s in RUNNER_STATES;
}
