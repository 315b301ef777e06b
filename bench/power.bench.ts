// npm run bench:power — a week of bursty CI load on 20 hosts, in simulated time, under three power policies
// (always on; sleep after 30 min idle, woken on demand: Earthly's first policy; kiln's policy: a shorter idle
// time, a warm buffer, and schedules for working hours and the nightly builds), each with a wake latency of
// 30 s and of 120 s. Every decision is made by kiln's own pure policy (src/server/power/policy.ts) and every
// placement by kiln's own placement (src/server/scheduler/placement.ts), the functions the server runs; the
// store and the network are left out (a week at 5 s steps is 120,960 passes). Reports host-hours awake and
// the p50/p95/p99 queue time each job spent beyond what it spent with every host always on.
//
// Load model (seeded; xorshift32, seed 20261207): Monday 00:00 UTC to Sunday 24:00.
//  - Weekdays 08:00-19:00: pushes arrive as a Poisson process at 0.4/min at 08:00 rising to 1/min at 10:00-12:00
//    and 14:00-17:00 (0.6/min over lunch, tailing to 0.25/min at 18:00-19:00); each push starts a burst of 3-12
//    jobs at once (peak demand ~70 of the fleet's 320 CPUs on average, with bursts well above it).
//  - Weekday evenings and nights: 0.03 pushes/min. Weekends: 0.01 pushes/min (an occasional push).
//  - Nightly builds: every day at 02:00, 40 jobs of 20-40 min, 4 CPUs each.
//  - Job size: 1 CPU (50%), 2 (30%), 4 (20%); 2 GiB per CPU; run time log-normal, median 4 min, capped at 30 min.
//  - Hosts: 20 × 16 CPUs / 64 GiB, amd64.
import { decidePower, type PowerHostView } from '../src/server/power/policy.ts';
import { placeJobs, type HostSlot, type JobDemand } from '../src/server/scheduler/placement.ts';
import { DEFAULT_POWER_POLICY, parseClock, parseDays, type PowerPolicy } from '../src/core/power.ts';
import { seededRandom } from '../src/core/seeded-random.ts';
import type { HostState } from '../src/core/host-state.ts';
import { cpus } from 'node:os';

const GiB = 1024 ** 3;
const MIN = 60_000;
const HOUR = 60 * MIN;
const STEP = 5_000;
const START = Date.parse('2026-12-07T00:00:00Z'); // a Monday
const WEEK = 7 * 24 * HOUR;
const HOSTS = 20;
const HOST_CPUS = 16;

interface SimJob {
  id: number;
  arrival: number;
  cpus: number;
  runMs: number;
}

function loadModel(seed: number): SimJob[] {
  const r = seededRandom(seed);
  const jobs: SimJob[] = [];
  const exp = (rate: number) => -Math.log(1 - r()) / rate;
  const normal = () => Math.sqrt(-2 * Math.log(1 - r())) * Math.cos(2 * Math.PI * r());
  const job = (at: number, cpu?: number, runMs?: number) => {
    const c = cpu ?? (r() < 0.5 ? 1 : r() < 0.6 ? 2 : 4);
    jobs.push({ id: jobs.length + 1, arrival: at, cpus: c, runMs: runMs ?? Math.min(30 * MIN, Math.max(20_000, 4 * MIN * Math.exp(0.8 * normal()))) });
  };
  /** Pushes per minute at `t`. */
  const rate = (t: number): number => {
    const d = new Date(t);
    const day = d.getUTCDay();
    const h = d.getUTCHours() + d.getUTCMinutes() / 60;
    if (day === 0 || day === 6) return 0.01;
    if (h < 8 || h >= 19) return 0.03;
    if (h < 9) return 0.4;
    if (h < 10) return 0.6;
    if (h < 12) return 1;
    if (h < 14) return 0.6;
    if (h < 17) return 1;
    if (h < 18) return 0.5;
    return 0.25;
  };
  // Thinning: candidate pushes at the peak rate, kept with probability rate(t)/peak.
  for (let t = START + exp(1) * MIN; t < START + WEEK; t += exp(1) * MIN) {
    if (r() >= rate(t)) continue;
    const n = 3 + Math.floor(r() * 10);
    for (let i = 0; i < n; i++) job(t);
  }
  for (let d = 0; d < 7; d++) for (let i = 0; i < 40; i++) job(START + d * 24 * HOUR + 2 * HOUR, 4, 20 * MIN + r() * 20 * MIN);
  return jobs.sort((a, b) => a.arrival - b.arrival || a.id - b.id);
}

type Policy = { name: string; power: PowerPolicy | undefined };

const weekdays = parseDays('mon-fri');
const POLICIES: Policy[] = [
  { name: 'always on', power: undefined },
  { name: 'sleep after 30 min idle', power: { ...DEFAULT_POWER_POLICY, pools: [{ name: 'all', match: {}, idleAfterMs: 30 * MIN, minAwake: 0, schedules: [] }] } },
  {
    name: 'kiln (10 min idle, warm buffer, schedules)',
    power: {
      ...DEFAULT_POWER_POLICY,
      pools: [
        {
          name: 'all',
          match: {},
          idleAfterMs: 10 * MIN,
          minAwake: 1,
          schedules: [
            // Working hours: a warm buffer sized to the morning's first bursts, up a little before 08:00.
            { days: weekdays, fromMin: parseClock('07:50'), toMin: parseClock('19:00'), timeZone: 'UTC', minAwake: 6 },
            // The nightly builds (160 CPUs at 02:00): every host is up when they start.
            { days: parseDays('daily'), fromMin: parseClock('01:55'), toMin: parseClock('02:05'), timeZone: 'UTC', minAwake: Infinity },
          ],
        },
      ],
    },
  },
];

interface SimHost {
  id: number;
  state: HostState;
  readyAt: number;
  running: { id: number; cpus: number; endsAt: number }[];
  idleSince: number | undefined;
}

function simulate(jobs: SimJob[], policy: Policy, wakeLatencyMs: number): { awakeHostHours: number; wait: Map<number, number>; wakes: number; decideMs: number } {
  const hosts: SimHost[] = Array.from({ length: HOSTS }, (_, i) => ({ id: i + 1, state: 'online', readyAt: 0, running: [], idleSince: START }));
  const queue: SimJob[] = [];
  const wait = new Map<number, number>();
  let next = 0;
  let awakeMs = 0;
  let wakes = 0;
  let decideMs = 0;
  const cap = { cpus: HOST_CPUS, memoryBytes: HOST_CPUS * 4 * GiB, diskBytes: 1000 * GiB };
  for (let t = START; t < START + WEEK + 6 * HOUR; t += STEP) {
    while (next < jobs.length && jobs[next]!.arrival <= t) queue.push(jobs[next++]!);
    for (const h of hosts) {
      h.running = h.running.filter((j) => j.endsAt > t);
      if (h.state === 'waking' && h.readyAt <= t) {
        h.state = 'online';
        h.idleSince = t;
      }
      if (h.state === 'online' && h.running.length > 0) h.idleSince = undefined;
      else if (h.state === 'online' && h.idleSince === undefined) h.idleSince = t;
    }
    // The scheduler: the queue in arrival order onto the online hosts.
    if (queue.length > 0) {
      const slots: HostSlot[] = hosts
        .filter((h) => h.state === 'online')
        .map((h) => {
          const used = h.running.reduce((s, j) => s + j.cpus, 0);
          return { id: h.id, arch: 'amd64', labels: [], capacity: cap, free: { cpus: HOST_CPUS - used, memoryBytes: (HOST_CPUS - used) * 4 * GiB, diskBytes: cap.diskBytes } };
        });
      const demand: JobDemand[] = queue.map((j) => ({ id: j.id, tenant: '', arch: 'amd64', cpus: j.cpus, memoryBytes: j.cpus * 2 * GiB, diskBytes: 10 * GiB, hostLabels: [] }));
      const placed = placeJobs(slots, demand).placements;
      const byId = new Map(queue.map((j) => [j.id, j]));
      for (const p of placed) {
        const j = byId.get(p.jobId)!;
        const h = hosts[p.hostId - 1]!;
        h.running.push({ id: j.id, cpus: j.cpus, endsAt: t + j.runMs });
        h.idleSince = undefined;
        wait.set(j.id, t - j.arrival);
      }
      const done = new Set(placed.map((p) => p.jobId));
      for (let i = queue.length - 1; i >= 0; i--) if (done.has(queue[i]!.id)) queue.splice(i, 1);
    }
    // The power manager: kiln's pure policy, once per step.
    if (policy.power) {
      const views: PowerHostView[] = hosts.map((h) => {
        const used = h.running.reduce((s, j) => s + j.cpus, 0);
        return {
          id: h.id,
          name: `h${String(h.id).padStart(2, '0')}`,
          arch: 'amd64',
          labels: [],
          capacity: cap,
          state: h.state,
          cordoned: false,
          drainRequested: false,
          canSleep: true,
          canWake: true,
          used: { cpus: used, memoryBytes: used * 2 * GiB, diskBytes: h.running.length * 10 * GiB },
          activeJobs: h.running.length,
          idleSinceMs: h.idleSince,
          openRequest: h.state === 'waking' ? 'wake' : undefined,
          markedUntilMs: undefined,
          wakeFailures: 0,
        };
      });
      const shapes = new Map<number, number>();
      for (const j of queue) shapes.set(j.cpus, (shapes.get(j.cpus) ?? 0) + 1);
      const demand = [...shapes].map(([c, count]) => ({ arch: 'amd64' as const, hostLabels: [], cpus: c, memoryBytes: c * 2 * GiB, diskBytes: 10 * GiB, count }));
      const t0 = performance.now();
      const d = decidePower(views, demand, policy.power, t);
      decideMs += performance.now() - t0;
      for (const w of d.wake) {
        const h = hosts[w.hostId - 1]!;
        h.state = 'waking';
        h.readyAt = t + wakeLatencyMs;
        wakes++;
      }
      for (const id of d.sleep) {
        const h = hosts[id - 1]!;
        h.state = 'asleep';
        h.idleSince = undefined;
      }
    }
    if (t < START + WEEK) awakeMs += hosts.filter((h) => h.state !== 'asleep').length * STEP;
  }
  return { awakeHostHours: awakeMs / HOUR, wait, wakes, decideMs };
}

function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] ?? 0;
}

const jobs = loadModel(20261207);
console.log(`kiln bench:power — ${jobs.length} jobs over a simulated week, ${HOSTS} hosts × ${HOST_CPUS} CPUs, ${STEP / 1000} s steps; ${cpus().length} CPUs (${cpus()[0]?.model ?? '?'}), Node ${process.version}`);
const rows: string[] = ['| wake latency | policy | host-hours awake | vs always on | added queue p50 / p95 / p99 | wakes | ms per decision |', '|---|---|---|---|---|---|---|'];
for (const latency of [30_000, 120_000]) {
  const base = simulate(jobs, POLICIES[0]!, latency);
  for (const p of POLICIES) {
    const r = p === POLICIES[0] ? base : simulate(jobs, p, latency);
    const added = jobs.map((j) => Math.max(0, (r.wait.get(j.id) ?? Infinity) - (base.wait.get(j.id) ?? 0)) / 1000);
    const unplaced = jobs.filter((j) => !r.wait.has(j.id)).length;
    const steps = (WEEK + 6 * HOUR) / STEP;
    rows.push(
      `| ${latency / 1000} s | ${p.name} | ${r.awakeHostHours.toFixed(0)} | ${((100 * r.awakeHostHours) / base.awakeHostHours).toFixed(0)}% | ${pct(added, 50).toFixed(0)} / ${pct(added, 95).toFixed(0)} / ${pct(added, 99).toFixed(0)} s${unplaced ? ` (${unplaced} never ran)` : ''} | ${r.wakes} | ${p.power ? (r.decideMs / steps).toFixed(3) : '-'} |`,
    );
  }
}
console.log(rows.join('\n'));
