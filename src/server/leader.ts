/**
 * Periodic work that must run once across all replicas, done by whichever replica holds the leader
 * advisory lock: hosts that stopped reporting lose their jobs (requeued if they never started), jobs past
 * their deadline are timed out. A replica that dies loses the lock with its database connection. On the
 * embedded store it also does autovacuum's work (../store/upkeep.ts), when the server is quiet.
 */
import { lostHosts, expireHost, heartbeatServer } from '../store/hosts.ts';
import { activeJobsOnHosts, overdueJobs } from '../store/jobs.ts';
import { tablesDue, upkeep } from '../store/upkeep.ts';
import { purgeIdempotencyKeys } from '../store/submissions.ts';
import type { ServerContext } from './context.ts';
import type { JobCommands } from './jobs/job-commands.ts';
import { makeLoop } from './loop.ts';

export interface UpkeepTiming {
  /** How often the embedded store's tables are checked for upkeep. */
  everyMs: number;
  /** Upkeep blocks the embedded store's event loop (tens of ms), so it waits for this much quiet... */
  quietMs: number;
  /** ...but not longer than this: a server that is never quiet still gets it. */
  atMostEveryMs: number;
}
export const UPKEEP_TIMING: UpkeepTiming = { everyMs: 30_000, quietMs: 2_000, atMostEveryMs: 10 * 60_000 };

export const LEADER_LOCK_KEY = 0x6b696c6e; // "kiln"

export interface Leader {
  isLeader(): boolean;
  start(): void;
  stop(): Promise<void>;
  /** Runs the periodic sweeps once (tests call it directly). */
  sweep(): Promise<void>;
}

export function makeLeader(ctx: ServerContext, jobs: JobCommands, opts: { intervalMs?: number; url?: string | null; upkeep?: UpkeepTiming } = {}): Leader {
  const up = opts.upkeep ?? UPKEEP_TIMING;
  const intervalMs = opts.intervalMs ?? 1000;
  let lock: { release(): Promise<void>; lost: Promise<void> } | undefined;
  let timer: NodeJS.Timeout | undefined;
  let stopped = false;
  const log = ctx.log.child({ part: 'leader' });
  let lastUpkeep = performance.now();
  let lastActivity = 0;
  const offActivity: (() => void)[] = [];

  let lastPurge = 0;
  /** Idempotency keys past their window, once a minute. */
  async function purgeKeysIfDue(): Promise<void> {
    if (performance.now() - lastPurge < 60_000) return;
    lastPurge = performance.now();
    const n = await purgeIdempotencyKeys(ctx.store.db);
    if (n > 0) log.debug({ keys: n }, 'forgot expired idempotency keys');
  }

  async function upkeepIfDue(): Promise<void> {
    const now = performance.now();
    if (ctx.store.kind !== 'pglite' || now - lastUpkeep < up.everyMs) return;
    if (now - lastActivity < up.quietMs && now - lastUpkeep < up.atMostEveryMs) return;
    lastUpkeep = now;
    const done = await upkeep(ctx.store.db, await tablesDue(ctx.store.db));
    if (done.length === 0) return;
    log.info({ tables: done }, 'embedded store upkeep (vacuum, statistics)');
    ctx.events.emit('store.upkeep', { tables: done });
  }

  async function sweep(): Promise<void> {
    for (const h of await lostHosts(ctx.store.db, ctx.options.hostLostAfterMs)) {
      if (!(await expireHost(ctx.store.db, h.id, ctx.options.hostLostAfterMs))) continue;
      for (const j of await activeJobsOnHosts(ctx.store.db, [h.id])) {
        const r = await jobs.lose(j.id, j.attempt, `host ${h.name} stopped reporting`);
        if (r) log.warn({ jobId: j.id, hostId: h.id, requeued: r.requeued }, 'job lost with its host');
      }
      ctx.events.emit('host.state', { hostId: h.id, name: h.name, state: 'offline' });
    }
    for (const j of await overdueJobs(ctx.store.db, ctx.options.timeoutGraceMs)) await jobs.timeOut(j.id, j.attempt);
  }

  // Each tick: heartbeat, try for the lock, and the leader's work when held (failures are retried next tick).
  const loop = makeLoop(tick, { onError: (e) => log.warn({ err: e }, 'periodic work failed; retrying') });

  async function tick(): Promise<void> {
    await heartbeatServer(ctx.store.db, ctx.serverId, opts.url ?? null);
    if (!lock) {
      lock = await ctx.store.tryAdvisoryLock(LEADER_LOCK_KEY);
      if (lock) {
        log.info('this replica is now the leader');
        ctx.events.emit('leader.changed', { leader: true });
        void lock.lost.then(() => {
          if (stopped) return;
          log.warn('lost the leader lock');
          lock = undefined;
          ctx.events.emit('leader.changed', { leader: false });
        });
      }
    }
    if (lock) {
      await sweep();
      await purgeKeysIfDue();
      await upkeepIfDue();
    }
  }

  return {
    isLeader: () => lock !== undefined,
    sweep,
    start() {
      const active = () => (lastActivity = performance.now());
      offActivity.push(ctx.events.on('job.placed', active), ctx.events.on('job.state', active), ctx.events.on('job.submitted', active));
      timer = setInterval(() => loop.kick(), intervalMs);
      loop.start();
    },
    async stop() {
      stopped = true;
      clearInterval(timer);
      for (const off of offActivity.splice(0)) off();
      await loop.stop();
      await lock?.release();
      lock = undefined;
    },
  };
}
