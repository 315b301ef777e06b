// Property tests of the pure placement over many random fleets and queues (seeded, so failures replay).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { placeJobs, firstFitDecreasing, fits, type HostSlot, type JobDemand } from './placement.ts';
import { pickOne, seededRandom } from '../../core/seeded-random.ts';

const GiB = 1024 ** 3;

const rng = seededRandom;
const pick = pickOne;

function fleet(r: () => number, n: number): HostSlot[] {
  return Array.from({ length: n }, (_, i) => {
    const cpus = pick(r, [2, 4, 8, 16, 32]);
    const mem = cpus * pick(r, [2, 4, 8]) * GiB;
    const disk = pick(r, [50, 200, 1000]) * GiB;
    const usedCpu = Math.floor(r() * cpus * 0.5);
    return {
      id: i + 1,
      arch: r() < 0.6 ? 'amd64' : 'arm64',
      labels: r() < 0.2 ? ['gpu'] : [],
      capacity: { cpus, memoryBytes: mem, diskBytes: disk },
      free: { cpus: cpus - usedCpu, memoryBytes: mem - usedCpu * GiB, diskBytes: disk },
    };
  });
}

function queue(r: () => number, n: number, dupes = false): JobDemand[] {
  const jobs: JobDemand[] = Array.from({ length: n }, (_, i) => {
    const cpus = pick(r, [1, 1, 2, 2, 4, 8, 16, 64]);
    return {
      id: i + 1,
      tenant: pick(r, ['a', 'b', 'c']),
      arch: r() < 0.5 ? 'amd64' : 'arm64',
      cpus,
      memoryBytes: cpus * pick(r, [1, 2, 4]) * GiB,
      diskBytes: pick(r, [10, 20, 100]) * GiB,
      hostLabels: r() < 0.1 ? ['gpu'] : [],
    };
  });
  return dupes ? [...jobs, ...jobs.slice(0, n / 4)] : jobs;
}

void test('placement properties: never over-commits, never the wrong arch or labels, never places a job twice, leaves nothing placeable', () => {
  for (let seed = 1; seed <= 300; seed++) {
    const r = rng(seed);
    const hosts = fleet(r, 1 + Math.floor(r() * 30));
    const jobs = queue(r, Math.floor(r() * 200), seed % 3 === 0);
    const limits = seed % 5 === 0 ? new Map([['a', 3]]) : undefined;
    const before = structuredClone(hosts);
    const { placements, free } = placeJobs(hosts, jobs, limits);
    assert.deepEqual(hosts, before, 'inputs are not mutated');
    const hostById = new Map(hosts.map((h) => [h.id, h]));
    const jobById = new Map(jobs.map((j) => [j.id, j]));
    const used = new Map(hosts.map((h) => [h.id, { cpus: 0, memoryBytes: 0, diskBytes: 0 }]));
    const seen = new Set<number>();
    for (const p of placements) {
      assert.ok(!seen.has(p.jobId), `seed ${seed}: job ${p.jobId} placed twice`);
      seen.add(p.jobId);
      const h = hostById.get(p.hostId)!;
      const j = jobById.get(p.jobId)!;
      assert.equal(h.arch, j.arch, `seed ${seed}: wrong arch`);
      assert.ok(j.hostLabels.every((l) => h.labels.includes(l)), `seed ${seed}: missing label`);
      const u = used.get(h.id)!;
      u.cpus += j.cpus;
      u.memoryBytes += j.memoryBytes;
      u.diskBytes += j.diskBytes;
    }
    for (const h of hosts) {
      const u = used.get(h.id)!;
      assert.ok(u.cpus <= h.free.cpus && u.memoryBytes <= h.free.memoryBytes && u.diskBytes <= h.free.diskBytes, `seed ${seed}: host ${h.id} over-committed`);
      assert.deepEqual(free.get(h.id), { cpus: h.free.cpus - u.cpus, memoryBytes: h.free.memoryBytes - u.memoryBytes, diskBytes: h.free.diskBytes - u.diskBytes });
    }
    if (limits) assert.ok(placements.filter((p) => jobById.get(p.jobId)!.tenant === 'a').length <= 3, `seed ${seed}: tenant limit broken`);
    // greedy completeness: an unplaced job (of an unlimited tenant) fits on no host that is left
    for (const j of jobs) {
      if (seen.has(j.id) || limits?.has(j.tenant)) continue;
      const could = hosts.some((h) => h.arch === j.arch && j.hostLabels.every((l) => h.labels.includes(l)) && fits(free.get(h.id)!, j));
      assert.ok(!could, `seed ${seed}: job ${j.id} left queued though a host has room`);
    }
  }
});

void test('placement packs: best fit keeps room for a large job; close to first-fit decreasing overall', () => {
  const hosts: HostSlot[] = [
    { id: 1, arch: 'amd64', labels: [], capacity: { cpus: 16, memoryBytes: 64 * GiB, diskBytes: 1000 * GiB }, free: { cpus: 16, memoryBytes: 64 * GiB, diskBytes: 1000 * GiB } },
    { id: 2, arch: 'amd64', labels: [], capacity: { cpus: 4, memoryBytes: 16 * GiB, diskBytes: 1000 * GiB }, free: { cpus: 4, memoryBytes: 16 * GiB, diskBytes: 1000 * GiB } },
  ];
  const small: JobDemand = { id: 1, tenant: 't', arch: 'amd64', cpus: 2, memoryBytes: 4 * GiB, diskBytes: 10 * GiB, hostLabels: [] };
  const big: JobDemand = { ...small, id: 2, cpus: 16, memoryBytes: 64 * GiB };
  const { placements } = placeJobs(hosts, [small, big]);
  assert.deepEqual(placements, [{ jobId: 1, hostId: 2 }, { jobId: 2, hostId: 1 }]);
  let ratioSum = 0;
  for (let seed = 1; seed <= 20; seed++) {
    const r = rng(seed * 7919);
    const hs = fleet(r, 50);
    const js = queue(r, 2000);
    ratioSum += placeJobs(hs, js).placements.length / firstFitDecreasing(hs, js).placements.length;
  }
  assert.ok(ratioSum / 20 >= 0.97, `mean packing ratio ${ratioSum / 20} below 0.97`);
});

void test('placement with penalties: a job goes to a penalised host only when no host of a lower level has room; never banned', () => {
  for (let seed = 1; seed <= 300; seed++) {
    const r = rng(seed * 31);
    const hosts = fleet(r, 1 + Math.floor(r() * 20));
    const jobs = queue(r, Math.floor(r() * 120));
    const penalties = new Map<number, number>();
    for (const h of hosts) if (r() < 0.4) penalties.set(h.id, 1 + Math.floor(r() * 3));
    const { placements, free } = placeJobs(hosts, jobs, undefined, penalties);
    // Replay the placements in order: at each one, no host of a lower level could have taken the job.
    const left = new Map(hosts.map((h) => [h.id, { ...h.free }]));
    const jobById = new Map(jobs.map((j) => [j.id, j]));
    const level = (id: number) => penalties.get(id) ?? 0;
    for (const p of placements) {
      const j = jobById.get(p.jobId)!;
      const better = hosts.find((h) => level(h.id) < level(p.hostId) && h.arch === j.arch && j.hostLabels.every((l) => h.labels.includes(l)) && fits(left.get(h.id)!, j));
      assert.equal(better, undefined, `seed ${seed}: job ${j.id} went to host ${p.hostId} (level ${level(p.hostId)}) though host ${better?.id} (level ${better ? level(better.id) : 0}) had room`);
      const f = left.get(p.hostId)!;
      f.cpus -= j.cpus;
      f.memoryBytes -= j.memoryBytes;
      f.diskBytes -= j.diskBytes;
      assert.ok(f.cpus >= 0 && f.memoryBytes >= 0 && f.diskBytes >= 0, `seed ${seed}: host ${p.hostId} over-committed`);
    }
    // Never a ban: whatever is left unplaced fits on no host at all, penalised or not.
    const placed = new Set(placements.map((p) => p.jobId));
    for (const j of jobs) {
      if (placed.has(j.id)) continue;
      const could = hosts.some((h) => h.arch === j.arch && j.hostLabels.every((l) => h.labels.includes(l)) && fits(free.get(h.id)!, j));
      assert.ok(!could, `seed ${seed}: job ${j.id} left queued though a (penalised) host has room`);
    }
  }
});

void test('placement with penalties: the failing host is avoided while another fits, and used when it is the only fit', () => {
  const host = (id: number, cpus: number): HostSlot => ({ id, arch: 'amd64', labels: [], capacity: { cpus: 8, memoryBytes: 32 * GiB, diskBytes: 100 * GiB }, free: { cpus, memoryBytes: cpus * 4 * GiB, diskBytes: 100 * GiB } });
  const job = (id: number, cpus = 2): JobDemand => ({ id, tenant: 't', arch: 'amd64', cpus, memoryBytes: cpus * GiB, diskBytes: 10 * GiB, hostLabels: [] });
  // Without penalties host 1 (the tighter fit) wins; with host 1 penalised, host 2 takes the job.
  assert.deepEqual(placeJobs([host(1, 2), host(2, 8)], [job(1)]).placements, [{ jobId: 1, hostId: 1 }]);
  assert.deepEqual(placeJobs([host(1, 2), host(2, 8)], [job(1)], undefined, new Map([[1, 1]])).placements, [{ jobId: 1, hostId: 2 }]);
  // Host 2 has no room for the second job: the penalised host 1 still takes it.
  assert.deepEqual(placeJobs([host(1, 8), host(2, 2)], [job(1), job(2)], undefined, new Map([[1, 3]])).placements, [
    { jobId: 1, hostId: 2 },
    { jobId: 2, hostId: 1 },
  ]);
  // Levels order the hosts: a level-1 host before a level-2 one.
  assert.deepEqual(placeJobs([host(1, 8), host(2, 8), host(3, 8)], [job(1)], undefined, new Map([[1, 2], [2, 1], [3, 2]])).placements, [{ jobId: 1, hostId: 2 }]);
});

void test('cache affinity: a job goes to a host holding its cache when one has room, else to the best fit (never a wait)', () => {
  const host = (id: number, cpus: number, caches: string[] = []): HostSlot => ({
    id,
    arch: 'amd64',
    labels: [],
    capacity: { cpus: 16, memoryBytes: 64 * GiB, diskBytes: 500 * GiB },
    free: { cpus, memoryBytes: 64 * GiB, diskBytes: 500 * GiB },
    caches: new Set(caches),
  });
  const job = (id: number, cacheKey?: string): JobDemand => ({ id, tenant: 't', arch: 'amd64', cpus: 2, memoryBytes: GiB, diskBytes: GiB, hostLabels: [], ...(cacheKey ? { cacheKey } : {}) });
  // Host 1 is the tighter fit; host 2 holds the cache: the cache wins.
  assert.deepEqual(placeJobs([host(1, 2), host(2, 16, ['t/repo'])], [job(1, 't/repo')]).placements, [{ jobId: 1, hostId: 2 }]);
  // Without a cache key, the tight fit as before.
  assert.deepEqual(placeJobs([host(1, 2), host(2, 16, ['t/repo'])], [job(1)]).placements, [{ jobId: 1, hostId: 1 }]);
  // The cache's host is full: the job goes elsewhere now rather than wait.
  assert.deepEqual(placeJobs([host(1, 4), host(2, 1, ['t/repo'])], [job(1, 't/repo')]).placements, [{ jobId: 1, hostId: 1 }]);
  // Two jobs of the cache, room for one on its host: the second goes to another host.
  assert.deepEqual(placeJobs([host(1, 16), host(2, 2, ['t/repo'])], [job(1, 't/repo'), job(2, 't/repo')]).placements, [
    { jobId: 1, hostId: 2 },
    { jobId: 2, hostId: 1 },
  ]);
});

void test('penalties before cache affinity: a penalised host holding the cache loses to an unpenalised one; among equals the cache wins', () => {
  const host = (id: number, caches: string[] = []): HostSlot => ({ id, arch: 'amd64', labels: [], capacity: { cpus: 16, memoryBytes: 64 * GiB, diskBytes: 500 * GiB }, free: { cpus: 8, memoryBytes: 64 * GiB, diskBytes: 500 * GiB }, caches: new Set(caches) });
  const job = (id: number): JobDemand => ({ id, tenant: 't', arch: 'amd64', cpus: 2, memoryBytes: GiB, diskBytes: GiB, hostLabels: [], cacheKey: 't/repo' });
  assert.deepEqual(placeJobs([host(1, ['t/repo']), host(2)], [job(1)], undefined, new Map([[1, 1]])).placements, [{ jobId: 1, hostId: 2 }]);
  assert.deepEqual(placeJobs([host(1, ['t/repo']), host(2), host(3, ['t/repo'])], [job(1)], undefined, new Map([[1, 1], [2, 1]])).placements, [{ jobId: 1, hostId: 3 }]);
  assert.deepEqual(placeJobs([host(1), host(2, ['t/repo'])], [job(1)], undefined, new Map([[1, 1], [2, 1]])).placements, [{ jobId: 1, hostId: 2 }]);
});
