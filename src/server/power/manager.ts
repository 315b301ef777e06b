/**
 * The power manager of one replica. Every replica tells the agents it holds to sleep when a sleep request
 * for them is open. The leader alone (one pass at a time) decides: it reads the fleet and the queued demand,
 * runs the pure policy (./policy.ts), and turns the answer into durable requests (src/store/power.ts: at
 * most one open request per host, the host's state changed in the same transaction); it sends due wakes
 * (the wake command or a Wake-on-LAN packet, under a lease) and retries unanswered ones with backoff, and
 * after the last attempt marks the host and lets the next pass wake another. A wake is answered when the
 * host's agent connects (src/store/hosts.ts connectHost). A new leader, or the same server restarted,
 * finds the requests where the last one left them: a wake that was sent is waited for, not sent again.
 */
import { wakeBackoffMs, type PowerPolicy, DEFAULT_POWER_POLICY } from '../../core/power.ts';
import { toKilnError } from '../../core/errors.ts';
import type { HostPool, PoolHost } from '../scheduler/host-pool.ts';
import type { ServerContext } from '../context.ts';
import {
  cancelOrphanSleeps,
  claimSleepRequests,
  claimWakeRequests,
  failSleep,
  failWake,
  markWakeSent,
  overdueRequests,
  powerHosts,
  powerSummary,
  queuedDemand,
  requestSleep,
  requestWake,
  retryWake,
  type PowerHostRow,
  type PowerRequest,
} from '../../store/power.ts';
import { decidePower, type PowerDecision, type PowerHostView } from './policy.ts';
import { canWake, hostPowerStatus, wakeHost, type WakeCommands } from './wake.ts';
import { makePowerMetrics, type PowerMetrics } from './metrics.ts';

export interface PowerOptions extends WakeCommands {
  policy: PowerPolicy;
  /** How often replicas look for sleep requests and the leader decides (default 1 s). */
  tickMs?: number;
  /** The clock the policy reads (idle time, schedules); tests inject one. Default Date.now. */
  now?: () => number;
  /** How long an agent has to drain and go to sleep before the request fails (default 1 h). */
  sleepAnswerMs?: number;
}

export const DEFAULT_POWER_OPTIONS: PowerOptions = { policy: DEFAULT_POWER_POLICY };

export interface PowerManager {
  readonly metrics: PowerMetrics;
  start(): void;
  stop(): Promise<void>;
  /** One pass now (tests call it): sleeps delivered here; on the leader also decisions, wakes and timeouts. */
  tick(): Promise<void>;
  /** The last decision the leader made (for the API). */
  lastDecision(): PowerDecision | undefined;
  /** An operator's `kiln hosts wake` / `sleep`. */
  wake(hostId: number): Promise<PowerRequest | undefined>;
  sleep(hostId: number): Promise<PowerRequest | undefined>;
  /** The gateway tells the manager a host connected and which wake it answered. */
  connected(hostId: number, woke: { latencyMs: number; jobs: number } | undefined): void;
}

export function makePowerManager(ctx: ServerContext, deps: { registry: HostPool; isLeader: () => boolean; kick: () => void; options: PowerOptions }): PowerManager {
  const o = deps.options;
  const policy = o.policy;
  const now = o.now ?? Date.now;
  const tickMs = o.tickMs ?? 1000;
  const log = ctx.log.child({ part: 'power' });
  const metrics = makePowerMetrics(ctx.metrics.registry, () => powerHosts(ctx.store.db));
  /** When each idle host was first seen idle by this replica as leader (a new leader starts counting anew). */
  const idleSince = new Map<number, number>();
  /** Hosts woken recently, for "jobs that waited for a wake" (jobs placed on them, submitted before they came up). */
  const wokeAt = new Map<number, number>();
  let accountedAt = performance.now();
  let timer: NodeJS.Timeout | undefined;
  let busy: Promise<void> | undefined;
  let stopped = true;
  let decision: PowerDecision | undefined;
  /** The fleet as the last decision read it (Wake-on-LAN relays are picked from it). */
  let fleet: PowerHostRow[] = [];
  const offs: (() => void)[] = [];

  const localLink = (hostId: number): PoolHost | undefined => deps.registry.get(hostId);

  function view(h: PowerHostRow, t: number): PowerHostView {
    if (h.activeJobs > 0 || h.state !== 'online') idleSince.delete(h.id);
    else if (!idleSince.has(h.id)) idleSince.set(h.id, t);
    return {
      id: h.id,
      name: h.name,
      arch: h.arch,
      labels: h.labels,
      capacity: { cpus: h.cpus, memoryBytes: h.memoryBytes, diskBytes: h.diskBytes },
      state: h.state,
      cordoned: h.cordoned,
      drainRequested: h.drainRequested,
      canSleep: h.power !== null && h.power.driver !== 'none',
      canWake: canWake(h.power, o),
      used: h.used,
      activeJobs: h.activeJobs,
      idleSinceMs: idleSince.get(h.id),
      openRequest: h.openRequest,
      markedUntilMs: h.wakeMarkedUntilMs,
      wakeFailures: h.wakeFailures,
      ...(h.caches.length > 0 ? { caches: new Set(h.caches) } : {}),
    };
  }

  /** Every replica: tell the agents connected here to sleep. */
  async function deliverSleeps(): Promise<void> {
    for (const r of await claimSleepRequests(ctx.store.db, ctx.serverId, o.sleepAnswerMs ?? 60 * 60_000)) {
      const link = localLink(r.hostId);
      if (!link) continue; // it left meanwhile: the request expires (the host reconnecting cancels it)
      link.schedulable = false;
      link.send({ type: 'sleep', requestId: r.id });
      log.info({ hostId: r.hostId, requestId: r.id, reason: r.reason }, 'asked the host to sleep');
    }
  }

  async function giveUpOrRetry(r: PowerRequest, name: string, message: string): Promise<void> {
    if (r.attempts < policy.wakeAttempts) {
      const backoff = wakeBackoffMs(policy, r.attempts);
      if (await retryWake(ctx.store.db, r.id, backoff, message)) {
        metrics.wakes.inc({ result: 'retried' });
        log.warn({ hostId: r.hostId, host: name, attempt: r.attempts, backoffMs: backoff, msg: message }, 'wake not answered; retrying');
      }
      return;
    }
    if (await failWake(ctx.store.db, r.id, r.hostId, policy.markedForMs, message)) {
      metrics.wakes.inc({ result: 'failed' });
      log.error({ hostId: r.hostId, host: name, attempts: r.attempts, msg: message }, 'the host did not wake; marked, another host will be tried');
      ctx.events.emit('host.state', { hostId: r.hostId, name, state: 'asleep' });
      ctx.events.emit('power.wake_failed', { hostId: r.hostId, name, message });
    }
  }

  /** Leader: overdue wakes retried or given up; sleeps never carried out failed. */
  async function expire(): Promise<void> {
    const overdue = await overdueRequests(ctx.store.db);
    if (overdue.length > 0) {
      const hosts = new Map((await powerHosts(ctx.store.db)).map((h) => [h.id, h]));
      for (const r of overdue) {
        const h = hosts.get(r.hostId);
        const name = h?.name ?? String(r.hostId);
        if (r.kind === 'sleep') {
          if (await failSleep(ctx.store.db, r.id, r.hostId, 'the host did not go to sleep in time')) {
            metrics.sleeps.inc({ result: 'failed' });
            const link = localLink(r.hostId);
            if (link) link.schedulable = true;
            deps.kick();
          }
          continue;
        }
        const status = h ? await hostPowerStatus({ id: h.id, name: h.name, power: h.power }, o).catch(() => undefined) : undefined;
        const within = Math.round(policy.wakeTimeoutMs / 1000);
        await giveUpOrRetry(r, name, `the host did not connect within ${within} s of wake attempt ${r.attempts} of ${policy.wakeAttempts}${status ? `; ${status}` : ''}`);
      }
    }
    await cancelOrphanSleeps(ctx.store.db);
  }

  /** Leader: the policy's decision, made durable. */
  async function decide(): Promise<void> {
    const t = now();
    const summary = await powerSummary(ctx.store.db);
    const elapsed = (performance.now() - accountedAt) / 1000;
    accountedAt = performance.now();
    for (const [state, n] of summary.states) metrics.stateSeconds.inc({ state }, n * elapsed);
    if (summary.managed === 0) {
      // No host has a power driver: none can be put to sleep or woken, so there is nothing to decide. The
      // fleet read below (every host with its jobs' usage) and the placement on paper cost a leader with
      // 1,000 hosts about a tenth of a core, every second, for nothing.
      fleet = [];
      idleSince.clear();
      decision = undefined;
      return;
    }
    const rows = await powerHosts(ctx.store.db);
    fleet = rows;
    const views = rows.map((h) => view(h, t));
    const d = decidePower(views, await queuedDemand(ctx.store.db), policy, t);
    decision = d;
    const byId = new Map(rows.map((h) => [h.id, h]));
    for (const w of d.wake) {
      const r = await requestWake(ctx.store.db, w.hostId, w.reason, w.jobs);
      if (!r) continue;
      const name = byId.get(w.hostId)?.name ?? '';
      metrics.wakes.inc({ result: 'requested' });
      log.info({ hostId: w.hostId, host: name, reason: w.reason, jobs: w.jobs }, 'waking a host');
      ctx.events.emit('host.state', { hostId: w.hostId, name, state: 'waking' });
    }
    for (const id of d.sleep) {
      const r = await requestSleep(ctx.store.db, id, 'idle');
      if (!r) continue;
      const name = byId.get(id)?.name ?? '';
      const link = localLink(id);
      if (link) link.schedulable = false;
      metrics.sleeps.inc({ result: 'requested' });
      log.info({ hostId: id, host: name }, 'putting an idle host to sleep');
      ctx.events.emit('host.state', { hostId: id, name, state: 'draining' });
    }
  }

  /**
   * A Wake-on-LAN relay for an asleep host: an online host connected to this replica, other than the asleep
   * one, whose agent reported the same broadcast address (so it sits on the same network, where the packet
   * must be sent; the server may be elsewhere). Retries rotate through the candidates.
   */
  function wolRelay(r: { hostId: number; attempts: number; power: PowerHostRow['power'] }): { link: PoolHost; name: string } | undefined {
    const p = r.power;
    if (p?.driver !== 'wol' || !p.mac || !p.broadcast) return undefined;
    const found = fleet
      .filter((h) => h.id !== r.hostId && h.state === 'online' && h.power?.driver === 'wol' && h.power.broadcast === p.broadcast && localLink(h.id) !== undefined)
      .sort((a, b) => a.id - b.id);
    const h = found[(Math.max(1, r.attempts) - 1) % Math.max(1, found.length)];
    return h && { link: localLink(h.id)!, name: h.name };
  }

  /** Sends one wake: through a relay on the host's network when there is one, else from the server. */
  async function send(r: { hostId: number; hostName: string; attempts: number; power: PowerHostRow['power'] }): Promise<string | undefined> {
    const relay = wolRelay(r);
    const p = r.power;
    if (!relay || !p?.mac || !p.broadcast) {
      await wakeHost({ id: r.hostId, name: r.hostName, power: p }, o);
      return undefined;
    }
    relay.link.send({ type: 'wol', mac: p.mac, broadcast: p.broadcast, port: p.port ?? 9 });
    // The last attempt is also sent from the server itself, in case every relay fails to reach the host
    // (an error of its own is only logged: the relay's packet may well have gone out).
    if (r.attempts >= policy.wakeAttempts) {
      await wakeHost({ id: r.hostId, name: r.hostName, power: p }, o).catch((e: unknown) => log.debug({ hostId: r.hostId, err: (e as Error).message }, 'the server could not send the Wake-on-LAN packet itself'));
    }
    return relay.name;
  }

  /** Leader: wakes due to be sent, each under a lease, all at once (one slow command does not hold the rest). */
  async function sendWakes(): Promise<void> {
    const leaseMs = (o.commandTimeoutMs ?? 60_000) + 30_000;
    const due = await claimWakeRequests(ctx.store.db, ctx.serverId, leaseMs);
    await Promise.all(
      due.map(async (r) => {
        try {
          const via = await send(r);
          if (await markWakeSent(ctx.store.db, r.id, ctx.serverId, policy.wakeTimeoutMs)) {
            metrics.wakes.inc({ result: 'sent' });
            log.info({ hostId: r.hostId, host: r.hostName, attempt: r.attempts, driver: r.power?.driver, ...(via ? { via } : {}) }, via ? 'wake sent through an awake host on its network' : 'wake sent');
            ctx.events.emit('power.wake_sent', { hostId: r.hostId, name: r.hostName, attempt: r.attempts, ...(via ? { via } : {}) });
          }
        } catch (e) {
          const k = toKilnError(e);
          log.warn({ hostId: r.hostId, host: r.hostName, code: k.code, msg: k.message }, 'wake failed');
          await giveUpOrRetry(r, r.hostName, k.message);
        }
      }),
    );
  }

  async function tickOnce(): Promise<void> {
    try {
      await deliverSleeps();
      if (!deps.isLeader()) {
        idleSince.clear();
        return;
      }
      await expire();
      await decide();
      await sendWakes();
    } catch (e) {
      log.warn({ err: e }, 'power pass failed; retrying');
    }
  }

  function tick(): Promise<void> {
    if (busy) return busy.then(() => tick());
    busy = tickOnce().finally(() => (busy = undefined));
    return busy;
  }

  return {
    metrics,
    start() {
      stopped = false;
      offs.push(
        ctx.events.on('job.placed', (e) => {
          const up = wokeAt.get(e.hostId);
          if (up === undefined) return;
          const submitted = Date.now() - e.latencyMs;
          if (submitted > up) return;
          metrics.jobsWaited.inc();
          metrics.jobWakeWait.observe(e.latencyMs / 1000);
        }),
      );
      timer = setInterval(() => {
        if (!busy && !stopped) void tick();
      }, tickMs);
    },
    async stop() {
      stopped = true;
      clearInterval(timer);
      for (const off of offs.splice(0)) off();
      await busy;
    },
    tick,
    lastDecision: () => decision,
    async wake(hostId) {
      const r = await requestWake(ctx.store.db, hostId, 'operator', 0);
      if (r) metrics.wakes.inc({ result: 'requested' });
      if (r && deps.isLeader()) void tick();
      return r;
    },
    async sleep(hostId) {
      const r = await requestSleep(ctx.store.db, hostId, 'operator');
      if (!r) return r;
      metrics.sleeps.inc({ result: 'requested' });
      const link = localLink(hostId);
      if (link) link.schedulable = false;
      void tick();
      return r;
    },
    connected(hostId, woke) {
      idleSince.delete(hostId);
      if (!woke) return;
      wokeAt.set(hostId, Date.now());
      metrics.wakes.inc({ result: 'done' });
      metrics.wakeLatency.observe(woke.latencyMs / 1000);
    },
  };
}
