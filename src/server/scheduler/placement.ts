/**
 * Pure placement: which queued jobs go on which hosts. No I/O; the scheduler feeds it the hosts it owns
 * (with what is free on each) and the jobs it claimed, in fair order.
 *
 * Policy: jobs are taken in the order given (the queue's fairness order); each goes to the feasible host
 * (same arch, carries the job's host labels, room on every resource) where it fits tightest on its
 * scarcest resource: the resource the job needs the largest share of, on that host. Tight fits leave big
 * holes elsewhere intact, so large jobs still find room. A job that fits nowhere is skipped, not blocking
 * smaller jobs behind it.
 *
 * Preference: hosts may carry a penalty level (recent launch failures, scheduler/host-penalties.ts). A job
 * goes to a host of the lowest level that has room for it; among those, cache affinity comes first: a job
 * with a warm cache goes to a host holding that cache if one has room (docs/caches.md), and by fit among
 * those (else the best fit of that level: never a wait). A penalised host still takes the job when it is the
 * only one with room (de-preferred, never banned), even if another, unpenalised host holds the job's cache
 * but is full; a penalised host holding the cache loses to an unpenalised one without it.
 */
import type { Arch } from '../../core/arch.ts';
import type { Resources } from '../../core/host.ts';

export interface HostSlot {
  id: number;
  arch: Arch;
  labels: readonly string[];
  capacity: Resources;
  free: Resources;
  /** Cache keys the host holds (as its agent last reported them). */
  caches?: ReadonlySet<string>;
}

export interface JobDemand {
  id: number;
  tenant: string;
  arch: Arch;
  cpus: number;
  memoryBytes: number;
  diskBytes: number;
  hostLabels: readonly string[];
  /** The job's warm cache key: hosts holding it are preferred. */
  cacheKey?: string;
}

export interface Placement {
  jobId: number;
  hostId: number;
}

export interface PlacementResult {
  placements: Placement[];
  /** What is free on each host afterwards (a new map, built when read: the scheduler never reads it). */
  free: Map<number, Resources>;
}

export function fits(free: Resources, j: JobDemand): boolean {
  return j.cpus <= free.cpus && j.memoryBytes <= free.memoryBytes && j.diskBytes <= free.diskBytes;
}

export function hasLabels(host: { labels: readonly string[] }, j: JobDemand): boolean {
  return j.hostLabels.every((l) => host.labels.includes(l));
}

/**
 * Lower is a better (tighter) fit. Assumes the job fits. [what is left of the scarcest resource (the one
 * the job needs the largest share of; cpu, then memory, then disk on ties), the sum of what is left of
 * all three], as shares of the host's capacity. Allocation-free: it runs for every job × host pair.
 */
export function fitScore(h: HostSlot, free: Resources, j: JobDemand): [number, number] {
  const out: [number, number] = [0, 0];
  scoreInto(h, free, j, out);
  return out;
}

function scoreInto(h: HostSlot, free: Resources, j: JobDemand, out: [number, number]): void {
  const c = h.capacity;
  const needCpu = j.cpus / c.cpus;
  const leftCpu = (free.cpus - j.cpus) / c.cpus;
  const needMem = j.memoryBytes / c.memoryBytes;
  const leftMem = (free.memoryBytes - j.memoryBytes) / c.memoryBytes;
  const needDisk = c.diskBytes > 0 ? j.diskBytes / c.diskBytes : 0;
  const leftDisk = c.diskBytes > 0 ? (free.diskBytes - j.diskBytes) / c.diskBytes : 0;
  let need = needCpu;
  let left = leftCpu;
  if (needMem > need) {
    need = needMem;
    left = leftMem;
  }
  if (needDisk > need) left = leftDisk;
  out[0] = left;
  out[1] = leftCpu + leftMem + leftDisk;
}

/**
 * Places `jobs` (in order) on `hosts`. `tenantRoom` caps how many more jobs each listed tenant may start
 * (per-tenant concurrency limits); tenants not listed are unlimited. `penalties` gives hosts to avoid a level
 * (higher: avoided more); hosts not listed are at 0.
 */
export function placeJobs(
  hosts: readonly HostSlot[],
  jobs: readonly JobDemand[],
  tenantRoom?: ReadonlyMap<string, number>,
  penalties?: ReadonlyMap<number, number>,
): PlacementResult {
  const pen = penalties && penalties.size > 0 ? penalties : undefined;
  // A pass usually places a few jobs on a fleet of hundreds of hosts: what is free is copied only for the
  // hosts that take a job, and hosts are grouped by arch as indices (no allocation per host).
  const taken = new Map<number, Resources>();
  const freeAt = (i: number): Resources => taken.get(i) ?? hosts[i]!.free;
  const byArch = new Map<Arch, number[]>();
  for (let i = 0; i < hosts.length; i++) {
    const arch = hosts[i]!.arch;
    const list = byArch.get(arch);
    if (list) list.push(i);
    else byArch.set(arch, [i]);
  }
  const score: [number, number] = [0, 0];
  const room = new Map(tenantRoom ?? []);
  const placed = new Set<number>();
  const placements: Placement[] = [];
  for (const j of jobs) {
    if (placed.has(j.id)) continue;
    const left = room.get(j.tenant);
    if (left !== undefined && left <= 0) continue;
    let best = -1;
    let bestPen = Infinity;
    let bestCold = 2;
    let best0 = Infinity;
    let best1 = Infinity;
    const list = byArch.get(j.arch);
    if (!list) continue;
    for (let k = 0; k < list.length; k++) {
      const i = list[k]!;
      const h = hosts[i]!;
      const f = freeAt(i);
      if (!fits(f, j) || (j.hostLabels.length > 0 && !hasLabels(h, j))) continue;
      const p = pen ? (pen.get(h.id) ?? 0) : 0;
      if (p > bestPen) continue;
      scoreInto(h, f, j, score);
      const cold = j.cacheKey !== undefined && h.caches?.has(j.cacheKey) ? 0 : 1;
      const s0 = score[0];
      const s1 = score[1];
      // Lexicographic: penalty level, then cache (held first), then fit on the scarcest resource, then the next, then host id.
      const better =
        p !== bestPen ? p < bestPen : cold !== bestCold ? cold < bestCold : s0 !== best0 ? s0 < best0 : s1 !== best1 ? s1 < best1 : h.id < (best < 0 ? Infinity : hosts[best]!.id);
      if (better) {
        best = i;
        bestPen = p;
        bestCold = cold;
        best0 = s0;
        best1 = s1;
      }
    }
    if (best < 0) continue;
    let f = taken.get(best);
    if (!f) {
      f = { ...hosts[best]!.free };
      taken.set(best, f);
    }
    f.cpus -= j.cpus;
    f.memoryBytes -= j.memoryBytes;
    f.diskBytes -= j.diskBytes;
    placed.add(j.id);
    placements.push({ jobId: j.id, hostId: hosts[best]!.id });
    if (left !== undefined) room.set(j.tenant, left - 1);
  }
  return {
    placements,
    get free() {
      return new Map(hosts.map((h, i) => [h.id, { ...freeAt(i) }]));
    },
  };
}

/**
 * The offline yardstick for packing efficiency: first-fit decreasing (largest jobs first by their
 * normalised size, each on the first host with room). Knows the whole job list in advance, which the
 * online scheduler does not.
 */
export function firstFitDecreasing(hosts: readonly HostSlot[], jobs: readonly JobDemand[]): PlacementResult {
  const maxCpu = Math.max(1, ...hosts.map((h) => h.capacity.cpus));
  const maxMem = Math.max(1, ...hosts.map((h) => h.capacity.memoryBytes));
  const size = (j: JobDemand) => Math.max(j.cpus / maxCpu, j.memoryBytes / maxMem);
  const sorted = [...jobs].sort((a, b) => size(b) - size(a) || a.id - b.id);
  const free = new Map<number, Resources>(hosts.map((h) => [h.id, { ...h.free }]));
  const placements: Placement[] = [];
  for (const j of sorted) {
    const h = hosts.find((x) => x.arch === j.arch && fits(free.get(x.id)!, j) && hasLabels(x, j));
    if (!h) continue;
    const f = free.get(h.id)!;
    f.cpus -= j.cpus;
    f.memoryBytes -= j.memoryBytes;
    f.diskBytes -= j.diskBytes;
    placements.push({ jobId: j.id, hostId: h.id });
  }
  return { placements, free };
}
