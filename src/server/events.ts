/**
 * Typed events for everything the control plane changes, so tests (and the log follower) await them
 * instead of sleeping. One bus per server instance, shared by all its parts (GitHub's included); never a
 * module-level singleton.
 */
import { EventEmitter, once } from 'node:events';
import type { Job } from '../core/job.ts';
import type { JobState } from '../core/job-state.ts';
import type { HostState } from '../core/host-state.ts';
import type { HostMirror } from '../core/host.ts';
import type { StartedTimes } from '../core/timings.ts';

export interface ServerEvents {
  'job.submitted': { job: Job };
  /** The job as far as every listener needs it: read the rest from the store (most writers never load it). */
  /** `job.error` is set when the change carries one (a failed or lost job); absent on other changes. */
  /** `started`: on a change to running stored by the phase writer, the times the wait/boot figures need. */
  'job.state': { job: Pick<Job, 'id' | 'tenant' | 'attempt'> & { error?: Job['error'] }; from: JobState; to: JobState; started?: StartedTimes };
  /** A job's VM must stop (a cancel of an active job): the replica its host is connected to sends `stop`. */
  'job.stop': { jobId: number; attempt: number; hostId: number; reason: string };
  'job.placed': { jobId: number; attempt: number; hostId: number; latencyMs: number };
  'job.logs': { jobId: number; tenant: string };
  'host.state': { hostId: number; name: string; state: HostState };
  /**
   * A launch failed on a host: its VM could not be launched, did not boot or crashed, or (GitHub) a runner
   * ended on it before it took its job. The scheduler de-prefers such hosts for a while (host-penalties.ts).
   */
  'host.launch_failed': { hostId: number; jobId: number; code: string };
  'host.connected': { hostId: number; name: string };
  'host.disconnected': { hostId: number; name: string };
  /** An agent reported its host's status (the registry mirror). */
  'host.status': { hostId: number; name: string; mirror: HostMirror | null };
  'agent.rejected': { code: string; message: string };
  /** A cache transfer between two hosts began (the relay asked the peer for the version) or ended (`outcome` set). */
  'cache.transfer': { transferId: string; key: string; version: string; from: string; to: string; jobId: number; outcome?: string; bytes?: number; peakInFlightBytes?: number; reason?: string };
  /** Host power (src/server/power): a wake was sent, a wake was given up, a host went to sleep, a power command failed. */
  /** `via`: the awake host that relayed the Wake-on-LAN packet (absent: the server sent the wake itself). */
  'power.wake_sent': { hostId: number; name: string; attempt: number; via?: string };
  'power.wake_failed': { hostId: number; name: string; message: string };
  'power.asleep': { hostId: number; name: string };
  'power.error': { hostId: number; name: string; action: 'sleep' | 'wake'; message: string };
  'leader.changed': { leader: boolean };
  /** The leader vacuumed or analyzed tables of the embedded store (src/store/upkeep.ts). */
  'store.upkeep': { tables: { table: string; what: string; ms: number }[] };
  // GitHub Actions (server/github), on the same bus.
  /** A delivery was processed (outcome: applied, duplicate_action, ignored, refused, stale, bad_payload). */
  'delivery.processed': { deliveryId: string; outcome: string };
  'job.refused': { jobId: number; runAttempt: number; code: string; reason: string };
  /**
   * A job kiln serves went in_progress: GitHub's created_at and in_progress times (the pickup figure), and when
   * the runner that took it came online (null when not known, e.g. another runner took it).
   */
  'job.started': { jobId: number; runAttempt: number; labels: string[]; createdAt: string | null; startedAt: string | null; runnerOnlineAt: string | null };
  'runner.state': { name: string; state: string; reason?: string };
  /** A runner ended before it took a job; the job's failure count is now `failures`. */
  'runner.failed': { name: string; jobId: number; runAttempt: number; code: string; failures: number };
  /** kiln holds its GitHub calls until `untilMs` (GitHub's rate limit, or kiln's own budget). */
  'api.throttled': { untilMs: number; reason: string };
  'pass.done': { n: number };
}

/** A typed event bus over an event map `E` (name → payload). */
export class EventBus<E extends object> {
  readonly #ee = new EventEmitter();
  constructor() {
    this.#ee.setMaxListeners(0);
  }
  emit<K extends keyof E & string>(name: K, payload: E[K]): void {
    this.#ee.emit(name, payload);
  }
  on<K extends keyof E & string>(name: K, fn: (payload: E[K]) => void): () => void {
    this.#ee.on(name, fn);
    return () => this.#ee.off(name, fn);
  }
  /** Resolves with the first event for which `pred` holds; rejects after `timeoutMs`. */
  async waitFor<K extends keyof E & string>(name: K, pred: (p: E[K]) => boolean = () => true, timeoutMs = 10_000): Promise<E[K]> {
    const ac = new AbortController();
    const timer = setTimeout(() => ac.abort(), timeoutMs);
    try {
      for (;;) {
        const [p] = (await once(this.#ee, name, { signal: ac.signal })) as [E[K]];
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

/** The server's bus: every part of one server instance emits and listens here. */
export class ServerEventBus extends EventBus<ServerEvents> {}
