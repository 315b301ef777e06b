// The pure power policy: examples, then properties over many random fleets (seeded, so failures replay).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { decidePower, type PowerHostView, type QueuedDemand } from './policy.ts';
import { DEFAULT_POWER_POLICY, poolOf, minAwakeAt, parseClock, parseDays, type PowerPolicy } from '../../core/power.ts';
import { pickOne, seededRandom } from '../../core/seeded-random.ts';
import type { HostState } from '../../core/host-state.ts';

const GiB = 1024 ** 3;
const MIN = 60_000;

function host(id: number, state: HostState, o: Partial<PowerHostView> = {}): PowerHostView {
  return {
    id,
    name: `h${String(id).padStart(3, '0')}`,
    arch: 'amd64',
    labels: [],
    capacity: { cpus: 16, memoryBytes: 64 * GiB, diskBytes: 500 * GiB },
    state,
    cordoned: false,
    drainRequested: false,
    canSleep: true,
    canWake: true,
    used: { cpus: 0, memoryBytes: 0, diskBytes: 0 },
    activeJobs: 0,
    idleSinceMs: state === 'online' ? 0 : undefined,
    openRequest: undefined,
    markedUntilMs: undefined,
    wakeFailures: 0,
    ...o,
  };
}
const jobs = (count: number, o: Partial<QueuedDemand> = {}): QueuedDemand => ({ arch: 'amd64', hostLabels: [], cpus: 1, memoryBytes: GiB, diskBytes: 10 * GiB, count, ...o });
const policy = (o: Partial<PowerPolicy['pools'][number]> = {}): PowerPolicy => ({
  ...DEFAULT_POWER_POLICY,
  pools: [{ name: 'all', match: {}, idleAfterMs: 30 * MIN, minAwake: 0, schedules: [], ...o }],
});

void test('a burst of 50 one-CPU jobs for an asleep pool of 16-CPU hosts wakes exactly 4 (ceil 50/16)', () => {
  const hosts = Array.from({ length: 6 }, (_, i) => host(i + 1, 'asleep'));
  const d = decidePower(hosts, [jobs(50)], policy(), 0);
  assert.equal(d.wake.length, 4);
  assert.deepEqual(d.wake.map((w) => w.jobs).reduce((a, b) => a + b, 0), 50);
  assert.equal(d.unplaceable, 0);
});

void test('work a waking host will take never wakes a second one; an awake host with room wakes none', () => {
  const hosts = [host(1, 'waking'), host(2, 'asleep'), host(3, 'asleep')];
  assert.deepEqual(decidePower(hosts, [jobs(16)], policy(), 0).wake, []);
  const hosts2 = [host(1, 'online', { used: { cpus: 10, memoryBytes: 10 * GiB, diskBytes: 0 }, activeJobs: 10 }), host(2, 'asleep')];
  assert.deepEqual(decidePower(hosts2, [jobs(6)], policy(), 0).wake, []);
  assert.equal(decidePower(hosts2, [jobs(7)], policy(), 0).wake.length, 1);
});

void test('of hosts that take the same work, the one holding the waiting jobs\' warm cache is woken', () => {
  // h001 would win the tie on its name; h003 holds the cache of the waiting jobs (as reported before it slept).
  const plain = host(1, 'asleep');
  const other = host(2, 'asleep', { caches: new Set(['acme:other']) });
  const holder = host(3, 'asleep', { caches: new Set(['acme:repo', 'acme:x']) });
  assert.deepEqual(decidePower([plain, other, holder], [jobs(4, { cacheKey: 'acme:repo' })], policy(), 0).wake.map((w) => w.hostId), [3]);
  // Jobs without a cache: the usual order (the name).
  assert.deepEqual(decidePower([plain, other, holder], [jobs(4)], policy(), 0).wake.map((w) => w.hostId), [1]);
  // Taking more of the work still comes first: a bigger host without the cache beats a holder that takes less.
  const small = host(4, 'asleep', { capacity: { cpus: 2, memoryBytes: 8 * GiB, diskBytes: 500 * GiB }, caches: new Set(['acme:repo']) });
  assert.deepEqual(decidePower([plain, small], [jobs(4, { cacheKey: 'acme:repo' })], policy(), 0).wake.map((w) => w.hostId), [1]);
  // Two keys waiting, one host each: the first woken is the one whose cache more of the work uses.
  const a = host(5, 'asleep', { caches: new Set(['acme:a']) });
  const b = host(6, 'asleep', { caches: new Set(['acme:b']) });
  assert.deepEqual(decidePower([a, b], [jobs(2, { cacheKey: 'acme:a' }), jobs(10, { cacheKey: 'acme:b' })], policy(), 0).wake.map((w) => w.hostId), [6]);
});

void test('the best-fitting host is woken: the one that takes the work, and of those the smallest', () => {
  const big = host(1, 'asleep', { capacity: { cpus: 64, memoryBytes: 256 * GiB, diskBytes: 500 * GiB } });
  const small = host(2, 'asleep', { capacity: { cpus: 4, memoryBytes: 16 * GiB, diskBytes: 500 * GiB } });
  const arm = host(3, 'asleep', { arch: 'arm64' });
  const gpu = host(4, 'asleep', { labels: ['gpu'] });
  assert.deepEqual(decidePower([big, small, arm, gpu], [jobs(2)], policy(), 0).wake.map((w) => w.hostId), [2]);
  assert.deepEqual(decidePower([big, small, arm, gpu], [jobs(2, { arch: 'arm64' })], policy(), 0).wake.map((w) => w.hostId), [3]);
  assert.deepEqual(decidePower([big, small, arm, gpu], [jobs(1, { hostLabels: ['gpu'] })], policy(), 0).wake.map((w) => w.hostId), [4]);
  // 40 jobs: the big host takes them all in one wake.
  assert.deepEqual(decidePower([big, small, arm, gpu], [jobs(40)], policy(), 0).wake.map((w) => w.hostId), [1]);
});

void test('marked hosts, hosts with a request under way and hosts without a way to wake are passed over', () => {
  const hosts = [host(1, 'asleep', { markedUntilMs: 1000 }), host(2, 'asleep', { openRequest: 'wake' }), host(3, 'asleep', { canWake: false }), host(5, 'asleep', { cordoned: true }), host(6, 'asleep', { drainRequested: true }), host(4, 'asleep')];
  assert.deepEqual(decidePower(hosts, [jobs(1)], policy(), 500).wake.map((w) => w.hostId), [4]);
  // The mark expires.
  assert.deepEqual(decidePower(hosts.slice(0, 1), [jobs(1)], policy(), 1000).wake.map((w) => w.hostId), [1]);
});

void test('idle hosts sleep after the idle time, never below the minimum awake, and never with work they could take', () => {
  const hosts = [host(1, 'online', { idleSinceMs: 0 }), host(2, 'online', { idleSinceMs: 10 * MIN }), host(3, 'online', { idleSinceMs: 40 * MIN })];
  assert.deepEqual(decidePower(hosts, [], policy(), 25 * MIN).sleep, []);
  assert.deepEqual(decidePower(hosts, [], policy(), 35 * MIN).sleep, [1]);
  assert.deepEqual(decidePower(hosts, [], policy(), 45 * MIN).sleep, [1, 2]);
  assert.deepEqual(decidePower(hosts, [], policy({ minAwake: 2 }), 45 * MIN).sleep, [1]);
  assert.deepEqual(decidePower(hosts, [jobs(1)], policy(), 45 * MIN).sleep, []);
  assert.deepEqual(decidePower(hosts, [jobs(1, { arch: 'arm64' })], policy(), 45 * MIN).sleep, [1, 2]);
  // No idle time configured, no driver, busy, cordoned: never.
  assert.deepEqual(decidePower(hosts, [], policy({ idleAfterMs: undefined }), 45 * MIN).sleep, []);
  const others = [host(1, 'online', { canSleep: false }), host(2, 'online', { activeJobs: 1, idleSinceMs: undefined }), host(3, 'online', { cordoned: true })];
  assert.deepEqual(decidePower(others, [], policy(), 45 * MIN).sleep, []);
});

void test('the warm buffer wakes hosts up to the minimum; a schedule raises it in its window only', () => {
  const hosts = [host(1, 'asleep'), host(2, 'asleep'), host(3, 'asleep')];
  assert.equal(decidePower(hosts, [], policy({ minAwake: 2 }), 0).wake.length, 2);
  // Mon-Fri 08:00-19:00 UTC, every host. 2026-12-07 is a Monday.
  const schedules = [{ days: parseDays('mon-fri'), fromMin: parseClock('08:00'), toMin: parseClock('19:00'), timeZone: 'UTC', minAwake: Infinity }];
  const mon0900 = Date.parse('2026-12-07T09:00:00Z');
  const mon2000 = Date.parse('2026-12-07T20:00:00Z');
  const sat0900 = Date.parse('2026-12-12T09:00:00Z');
  assert.equal(decidePower(hosts, [], policy({ schedules }), mon0900).wake.length, 3);
  assert.equal(decidePower(hosts, [], policy({ schedules }), mon2000).wake.length, 0);
  assert.equal(decidePower(hosts, [], policy({ schedules }), sat0900).wake.length, 0);
  const awake = [host(1, 'online', { idleSinceMs: 0 }), host(2, 'online', { idleSinceMs: 0 })];
  assert.deepEqual(decidePower(awake, [], policy({ schedules }), mon0900).sleep, []);
  assert.deepEqual(decidePower(awake, [], policy({ schedules }), mon2000).sleep, [1, 2]);
});

void test('schedules: time zones, days and windows across midnight', () => {
  const berlin = { days: parseDays('mon-fri'), fromMin: parseClock('08:00'), toMin: parseClock('19:00'), timeZone: 'Europe/Berlin', minAwake: 5 };
  const pool = { name: 'p', match: {}, idleAfterMs: 1, minAwake: 1, schedules: [berlin] };
  // 07:30 UTC on a Monday in December is 08:30 in Berlin.
  assert.equal(minAwakeAt(pool, Date.parse('2026-12-07T07:30:00Z')), 5);
  assert.equal(minAwakeAt(pool, Date.parse('2026-12-07T06:30:00Z')), 1);
  const night = { ...berlin, timeZone: 'UTC', days: parseDays('fri'), fromMin: parseClock('22:00'), toMin: parseClock('02:00') };
  const p2 = { ...pool, schedules: [night] };
  assert.equal(minAwakeAt(p2, Date.parse('2026-12-11T23:00:00Z')), 5); // Friday night
  assert.equal(minAwakeAt(p2, Date.parse('2026-12-12T01:00:00Z')), 5); // Saturday 01:00 belongs to Friday's window
  assert.equal(minAwakeAt(p2, Date.parse('2026-12-13T01:00:00Z')), 1); // Sunday 01:00 does not
  assert.deepEqual(parseDays('sat,sun'), ['sun', 'sat']);
  assert.deepEqual(parseDays('fri-mon'), ['sun', 'mon', 'fri', 'sat']);
  assert.throws(() => parseDays('someday'), /not a day/);
  assert.throws(() => parseClock('25:00'), /time of day/);
});

// ---- properties ----

function randomFleet(r: () => number, n: number): PowerHostView[] {
  const states: HostState[] = ['online', 'online', 'asleep', 'asleep', 'waking', 'draining', 'offline'];
  return Array.from({ length: n }, (_, i) => {
    const state = pickOne(r, states);
    const cpus = pickOne(r, [4, 8, 16]);
    const busy = state === 'online' && r() < 0.4 ? Math.floor(r() * cpus) + 1 : 0;
    return host(i + 1, state, {
      arch: r() < 0.7 ? 'amd64' : 'arm64',
      labels: r() < 0.2 ? ['gpu'] : [],
      capacity: { cpus, memoryBytes: cpus * 4 * GiB, diskBytes: 500 * GiB },
      canSleep: r() < 0.9,
      canWake: r() < 0.9,
      used: { cpus: busy, memoryBytes: busy * GiB, diskBytes: 0 },
      activeJobs: busy,
      idleSinceMs: busy > 0 || state !== 'online' ? undefined : Math.floor(r() * 120) * MIN,
      openRequest: r() < 0.1 ? pickOne(r, ['sleep', 'wake'] as const) : undefined,
      markedUntilMs: r() < 0.1 ? 200 * MIN : undefined,
    });
  });
}

function randomDemand(r: () => number): QueuedDemand[] {
  return Array.from({ length: Math.floor(r() * 4) }, () => jobs(Math.floor(r() * 40), { arch: r() < 0.7 ? 'amd64' : 'arm64', cpus: pickOne(r, [1, 2, 4, 8]), hostLabels: r() < 0.1 ? ['gpu'] : [] }));
}

function randomPolicy(r: () => number): PowerPolicy {
  return {
    ...DEFAULT_POWER_POLICY,
    pools: [
      { name: 'arm', match: { arch: 'arm64' }, idleAfterMs: pickOne(r, [undefined, 10 * MIN, 30 * MIN]), minAwake: Math.floor(r() * 3), schedules: [] },
      { name: 'rest', match: {}, idleAfterMs: pickOne(r, [undefined, 10 * MIN, 30 * MIN]), minAwake: Math.floor(r() * 4), schedules: [] },
    ],
  };
}

/** The fleet after the decision is carried out: woken hosts waking, sleeping ones with a request under way. */
function apply(hosts: PowerHostView[], d: ReturnType<typeof decidePower>): PowerHostView[] {
  const w = new Set(d.wake.map((x) => x.hostId));
  const s = new Set(d.sleep);
  return hosts.map((h) => (w.has(h.id) ? { ...h, state: 'waking', openRequest: 'wake' } : s.has(h.id) ? { ...h, state: 'draining', openRequest: 'sleep' } : h));
}

void test('properties: only eligible hosts are woken or put to sleep, each once, and a second pass adds nothing', () => {
  for (let seed = 1; seed <= 400; seed++) {
    const r = seededRandom(seed);
    const hosts = randomFleet(r, 1 + Math.floor(r() * 25));
    const demand = randomDemand(r);
    const pol = randomPolicy(r);
    const now = 150 * MIN;
    const d = decidePower(hosts, demand, pol, now);
    const byId = new Map(hosts.map((h) => [h.id, h]));
    const woken = d.wake.map((w) => w.hostId);
    assert.equal(new Set(woken).size, woken.length, `seed ${seed}: a host woken twice`);
    assert.equal(new Set(d.sleep).size, d.sleep.length, `seed ${seed}: a host put to sleep twice`);
    for (const id of woken) {
      const h = byId.get(id)!;
      assert.equal(h.state, 'asleep', `seed ${seed}: woke a host that is ${h.state}`);
      assert.ok(h.canWake && !h.cordoned && !h.drainRequested && h.openRequest === undefined && (h.markedUntilMs === undefined || h.markedUntilMs <= now), `seed ${seed}: woke an ineligible host`);
      assert.ok(!d.sleep.includes(id));
    }
    for (const id of d.sleep) {
      const h = byId.get(id)!;
      const pool = poolOf(pol, h)!;
      assert.ok(h.state === 'online' && h.activeJobs === 0 && h.canSleep && h.openRequest === undefined && !h.cordoned, `seed ${seed}: put an ineligible host to sleep`);
      assert.ok(pool.idleAfterMs !== undefined && now - h.idleSinceMs! >= pool.idleAfterMs, `seed ${seed}: slept before the idle time`);
    }
    for (const w of d.wake) if (w.reason === 'demand') assert.ok(w.jobs > 0, `seed ${seed}: a demand wake that takes no job`);
    // Carried out, the same demand asks for nothing more: two passes (or two replicas' passes) never double-wake.
    const again = decidePower(apply(hosts, d), demand, pol, now);
    assert.deepEqual(again.wake, [], `seed ${seed}: the second pass woke more`);
    // The minimum awake per pool holds when there are hosts to hold it with.
    const after = apply(hosts, d);
    for (const pool of pol.pools) {
      const members = after.filter((h) => poolOf(pol, h) === pool);
      const awake = members.filter((h) => (h.state === 'online' || h.state === 'draining' || h.state === 'waking') && h.openRequest !== 'sleep').length;
      const before = hosts.filter((h) => poolOf(pol, h) === pool && (h.state === 'online' || h.state === 'draining' || h.state === 'waking') && h.openRequest !== 'sleep').length;
      if (before >= pool.minAwake) assert.ok(awake >= pool.minAwake, `seed ${seed}: pool ${pool.name} fell below its minimum (${awake} < ${pool.minAwake})`);
      else assert.ok(awake >= before, `seed ${seed}: pool ${pool.name} lost awake hosts while below its minimum`);
    }
  }
});

void test('property: demand wakes are minimal in count for one-shape demand on one-size hosts', () => {
  for (let seed = 1; seed <= 200; seed++) {
    const r = seededRandom(seed);
    const n = 1 + Math.floor(r() * 20);
    const cpus = pickOne(r, [4, 8, 16]);
    const hosts = Array.from({ length: n }, (_, i) => host(i + 1, 'asleep', { capacity: { cpus, memoryBytes: cpus * 4 * GiB, diskBytes: 500 * GiB } }));
    const jobCpus = pickOne(r, [1, 2, 4]);
    const count = Math.floor(r() * 100);
    const d = decidePower(hosts, [jobs(count, { cpus: jobCpus })], policy(), 0);
    const perHost = Math.floor(cpus / jobCpus);
    assert.equal(d.wake.length, Math.min(n, Math.ceil(count / perHost)), `seed ${seed}`);
  }
});
