/**
 * Typed events for everything the control plane changes, so tests (and the log follower) await them
 * instead of sleeping. One emitter per server instance; never a module-level singleton.
 */
import { EventEmitter, once } from 'node:events';
import type { Job } from '../core/job.ts';
import type { JobState } from '../core/job-state.ts';
import type { HostState } from '../core/host-state.ts';
import type { HostMirror } from '../core/host.ts';

export interface ServerEvents {
  'job.submitted': { job: Job };
  /** The job as far as every listener needs it: read the rest from the store (most writers never load it). */
  'job.state': { job: Pick<Job, 'id' | 'tenant' | 'attempt'>; from: JobState; to: JobState };
  'job.placed': { jobId: number; attempt: number; hostId: number; latencyMs: number };
  'job.logs': { jobId: number };
  'host.state': { hostId: number; name: string; state: HostState };
  'host.connected': { hostId: number; name: string };
  'host.disconnected': { hostId: number; name: string };
  /** An agent reported its host's status (the registry mirror). */
  'host.status': { hostId: number; name: string; mirror: HostMirror | null };
  'agent.rejected': { code: string; message: string };
  /** Host power (src/server/power): a wake was sent, a wake was given up, a host went to sleep, a power command failed. */
  'power.wake_sent': { hostId: number; name: string; attempt: number };
  'power.wake_failed': { hostId: number; name: string; message: string };
  'power.asleep': { hostId: number; name: string };
  'power.error': { hostId: number; name: string; action: 'sleep' | 'wake'; message: string };
  'leader.changed': { leader: boolean };
  /** The leader vacuumed or analyzed tables of the embedded store (src/store/upkeep.ts). */
  'store.upkeep': { tables: { table: string; what: string; ms: number }[] };
}

export class ServerEventBus {
  readonly #ee = new EventEmitter();
  constructor() {
    this.#ee.setMaxListeners(0);
  }
  emit<K extends keyof ServerEvents>(name: K, payload: ServerEvents[K]): void {
    this.#ee.emit(name, payload);
  }
  on<K extends keyof ServerEvents>(name: K, fn: (payload: ServerEvents[K]) => void): () => void {
    this.#ee.on(name, fn);
    return () => this.#ee.off(name, fn);
  }
  /** Resolves with the first event for which `pred` holds; rejects after `timeoutMs`. */
  async waitFor<K extends keyof ServerEvents>(name: K, pred: (p: ServerEvents[K]) => boolean = () => true, timeoutMs = 10_000): Promise<ServerEvents[K]> {
    const ac = new AbortController();
    const timer = setTimeout(() => ac.abort(), timeoutMs);
    try {
      for (;;) {
        const [p] = (await once(this.#ee, name, { signal: ac.signal })) as [ServerEvents[K]];
        if (pred(p)) return p;
      }
    } catch (e) {
      if (ac.signal.aborted) throw new Error(`timed out after ${timeoutMs} ms waiting for event ${name}`);
      throw e;
    } finally {
      clearTimeout(timer);
    }
  }
}
