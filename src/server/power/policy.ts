/**
 * The pure power policy: given the fleet, the queued work and the operator's policy, which hosts to put to
 * sleep and which to wake. No I/O, no clock (the caller passes `nowMs`); the power manager
 * (./manager.ts) feeds it from the store and turns its answer into durable requests, and the benchmark
 * (bench/power.bench.ts) runs the same function over a simulated week.
 *
 * Waking: the queued work is first placed (with the scheduler's own placement) on awake capacity: online
 * hosts' free room plus the whole of every host already waking (so work that a waking host will take never
 * wakes a second one). What is left is the need. Asleep hosts are then woken one at a time, each time the
 * one that takes the most of what is left (ties: the one holding the warm caches of more of those jobs, then
 * the smaller host, then fewer past wake failures, then the name), until nothing more can be placed. Then each pool's minimum awake hosts (its own, raised by any
 * schedule whose window is open) is topped up.
 * Sleeping: a host sleeps when its pool allows it (idle time set), it has a power driver, it ran nothing
 * for the pool's idle time, no queued job could use it, and the pool keeps its minimum awake without it.
 * The longest idle go first.
 */
import type { Arch } from '../../core/arch.ts';
import type { HostState } from '../../core/host-state.ts';
import type { Resources } from '../../core/host.ts';
import { minAwakeAt, poolOf, type PowerPolicy } from '../../core/power.ts';
import { placeJobs, type HostSlot, type JobDemand } from '../scheduler/placement.ts';

export interface PowerHostView {
  id: number;
  name: string;
  arch: Arch;
  labels: readonly string[];
  capacity: Resources;
  state: HostState;
  cordoned: boolean;
  drainRequested: boolean;
  /** The host has a power driver that can put it to sleep (not `none`). */
  canSleep: boolean;
  /** The server has a way to wake it (a wake command, or a Wake-on-LAN address it reported). */
  canWake: boolean;
  /** Resources of its active jobs. */
  used: Resources;
  activeJobs: number;
  /** Since when it has run nothing (undefined while it runs something). */
  idleSinceMs: number | undefined;
  /** A sleep or wake already under way for it (one at a time per host). */
  openRequest: 'sleep' | 'wake' | undefined;
  /** After failed wakes it is passed over until then. */
  markedUntilMs: number | undefined;
  wakeFailures: number;
  /** Cache keys the host held when its agent last reported (kept while it sleeps: docs/caches.md). */
  caches?: ReadonlySet<string>;
}

/** Queued jobs of one shape. */
export interface QueuedDemand {
  arch: Arch;
  hostLabels: readonly string[];
  cpus: number;
  memoryBytes: number;
  diskBytes: number;
  count: number;
  /** The jobs' warm cache key (host-side), when they use one: a host holding it is woken first. */
  cacheKey?: string;
}

export interface WakeDecision {
  hostId: number;
  reason: 'demand' | 'min_awake';
  /** Queued jobs this host is expected to take (0 for a warm-buffer wake). */
  jobs: number;
}

export interface PowerDecision {
  sleep: number[];
  wake: WakeDecision[];
  /** Queued jobs that neither awake capacity nor any host that could be woken can take. */
  unplaceable: number;
}

/** Demand beyond this many jobs is not looked at in one decision (it takes every host anyway). */
export const MAX_DEMAND_JOBS = 5000;

/** Awake for the warm buffer: up, and not on its way to sleep. */
const isAwake = (h: PowerHostView) => (h.state === 'online' || h.state === 'draining' || h.state === 'waking') && h.openRequest !== 'sleep';

function expand(demand: readonly QueuedDemand[]): JobDemand[] {
  const out: JobDemand[] = [];
  let id = 1;
  for (const d of demand) {
    for (let i = 0; i < d.count && out.length < MAX_DEMAND_JOBS; i++) {
      out.push({ id: id++, tenant: '', arch: d.arch, cpus: d.cpus, memoryBytes: d.memoryBytes, diskBytes: d.diskBytes, hostLabels: d.hostLabels, ...(d.cacheKey ? { cacheKey: d.cacheKey } : {}) });
    }
  }
  return out;
}

const fullSlot = (h: PowerHostView): HostSlot => ({ id: h.id, arch: h.arch, labels: h.labels, capacity: h.capacity, free: { ...h.capacity }, ...(h.caches ? { caches: h.caches } : {}) });

export function decidePower(hosts: readonly PowerHostView[], demand: readonly QueuedDemand[], policy: PowerPolicy, nowMs: number): PowerDecision {
  const jobs = expand(demand);
  // 1. What awake capacity (and capacity already waking) takes.
  const awakeSlots: HostSlot[] = [];
  for (const h of hosts) {
    if (h.state === 'waking') awakeSlots.push(fullSlot(h));
    else if (h.state === 'online' && !h.cordoned && !h.drainRequested && h.openRequest !== 'sleep') {
      awakeSlots.push({
        id: h.id,
        arch: h.arch,
        labels: h.labels,
        capacity: h.capacity,
        free: { cpus: h.capacity.cpus - h.used.cpus, memoryBytes: h.capacity.memoryBytes - h.used.memoryBytes, diskBytes: h.capacity.diskBytes - h.used.diskBytes },
      });
    }
  }
  const taken = new Set(placeJobs(awakeSlots, jobs).placements.map((p) => p.jobId));
  let need = jobs.filter((j) => !taken.has(j.id));

  // 2. Wake, one host per need: each time the asleep host that takes the most of what is left.
  const wake: WakeDecision[] = [];
  const woken = new Set<number>();
  // A cordoned or operator-drained host would take nothing once awake: it is not woken for work.
  const candidates = hosts.filter(
    (h) => h.state === 'asleep' && h.canWake && !h.cordoned && !h.drainRequested && h.openRequest === undefined && (h.markedUntilMs === undefined || h.markedUntilMs <= nowMs),
  );
  while (need.length > 0) {
    let best: { h: PowerHostView; placed: Set<number>; warm: number } | undefined;
    for (const h of candidates) {
      if (woken.has(h.id)) continue;
      const placed = new Set(placeJobs([fullSlot(h)], need).placements.map((p) => p.jobId));
      if (placed.size === 0) continue;
      const warm = need.filter((j) => placed.has(j.id) && j.cacheKey !== undefined && h.caches?.has(j.cacheKey)).length;
      if (!best || better(h, placed.size, warm, best.h, best.placed.size, best.warm)) best = { h, placed, warm };
    }
    if (!best) break;
    woken.add(best.h.id);
    wake.push({ hostId: best.h.id, reason: 'demand', jobs: best.placed.size });
    const placed = best.placed;
    need = need.filter((j) => !placed.has(j.id));
  }

  // 3. Each pool's minimum awake hosts (the warm buffer; schedules raise it in their windows).
  const pools = new Map<string, { min: number; awake: number; asleep: PowerHostView[]; idle: PowerHostView[] }>();
  for (const h of hosts) {
    const pool = poolOf(policy, h);
    if (!pool) continue;
    let p = pools.get(pool.name);
    if (!p) {
      p = { min: minAwakeAt(pool, nowMs), awake: 0, asleep: [], idle: [] };
      pools.set(pool.name, p);
    }
    if (isAwake(h) || woken.has(h.id)) p.awake++;
    else if (candidates.includes(h)) p.asleep.push(h);
    const idleFor = h.idleSinceMs === undefined ? -1 : nowMs - h.idleSinceMs;
    if (
      pool.idleAfterMs !== undefined &&
      h.state === 'online' &&
      h.canSleep &&
      !h.cordoned &&
      !h.drainRequested &&
      h.activeJobs === 0 &&
      h.openRequest === undefined &&
      idleFor >= pool.idleAfterMs &&
      placeJobs([fullSlot(h)], jobs).placements.length === 0
    ) {
      p.idle.push(h);
    }
  }
  const sleep: number[] = [];
  for (const p of pools.values()) {
    if (p.awake < p.min) {
      // Largest hosts first: a warm buffer is for whatever comes.
      const order = p.asleep.filter((h) => !woken.has(h.id)).sort((a, b) => b.capacity.cpus - a.capacity.cpus || a.wakeFailures - b.wakeFailures || a.name.localeCompare(b.name));
      for (const h of order) {
        if (p.awake >= p.min) break;
        woken.add(h.id);
        wake.push({ hostId: h.id, reason: 'min_awake', jobs: 0 });
        p.awake++;
      }
      continue;
    }
    const order = p.idle.sort((a, b) => a.idleSinceMs! - b.idleSinceMs! || a.name.localeCompare(b.name));
    for (const h of order) {
      if (p.awake - 1 < p.min) break;
      sleep.push(h.id);
      p.awake--;
    }
  }
  return { sleep, wake, unplaceable: need.length };
}

/**
 * Whether `a`, taking `na` jobs of which `wa` find their cache there, fits the waiting work better than `b`
 * (`nb`, `wb`): more jobs first, then more of them warm, then the smaller host, fewer wake failures, the name.
 */
function better(a: PowerHostView, na: number, wa: number, b: PowerHostView, nb: number, wb: number): boolean {
  if (na !== nb) return na > nb;
  if (wa !== wb) return wa > wb;
  const sa = a.capacity.cpus * a.capacity.memoryBytes;
  const sb = b.capacity.cpus * b.capacity.memoryBytes;
  if (sa !== sb) return sa < sb;
  if (a.wakeFailures !== b.wakeFailures) return a.wakeFailures < b.wakeFailures;
  return a.name < b.name;
}
