/**
 * The host state machine (DESIGN.md): online, draining, asleep, waking, offline.
 * `cordoned` is a separate flag (no new jobs, host stays online); draining means "no new jobs, finish what
 * runs" and survives reconnects.
 */
import { assertNever } from './job-state.ts';
import { KilnError } from './errors.ts';

export const HOST_STATES = {
  online: 'online',
  draining: 'draining',
  asleep: 'asleep',
  waking: 'waking',
  offline: 'offline',
} as const;
export type HostState = keyof typeof HOST_STATES;
export const HOST_STATE_LIST = Object.keys(HOST_STATES) as HostState[];

export type HostEvent =
  | { type: 'connect'; draining: boolean }
  | { type: 'disconnect' }
  | { type: 'drain' }
  | { type: 'undrain' }
  | { type: 'sleep' }
  | { type: 'wake' };

export function nextHostState(from: HostState, event: HostEvent): HostState {
  const bad = (): never => {
    throw new KilnError('host.bad_transition', `a host that is ${from} cannot take event "${event.type}"`);
  };
  switch (event.type) {
    case 'connect':
      return event.draining ? 'draining' : 'online';
    case 'disconnect':
      return from === 'asleep' ? 'asleep' : 'offline';
    case 'drain':
      return from === 'online' || from === 'draining' ? 'draining' : bad();
    case 'undrain':
      return from === 'draining' || from === 'online' ? 'online' : bad();
    case 'sleep':
      return from === 'online' || from === 'draining' ? 'asleep' : bad();
    case 'wake':
      return from === 'asleep' ? 'waking' : bad();
    default:
      return assertNever(event);
  }
}

/** Whether the scheduler may place new jobs on a host. */
export function acceptsJobs(state: HostState, cordoned: boolean): boolean {
  switch (state) {
    case 'online':
      return !cordoned;
    case 'draining':
    case 'asleep':
    case 'waking':
    case 'offline':
      return false;
    default:
      return assertNever(state);
  }
}
