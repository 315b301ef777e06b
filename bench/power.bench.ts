// npm run bench:power — a week of bursty CI load on 20 hosts, in simulated time, under three power policies
// (always on; sleep after 30 min idle, woken on demand: Earthly's first policy; kiln's policy: a shorter idle
// time, a warm buffer, and schedules for working hours and the nightly builds), each with a wake latency of
// 30 s and of 120 s.
//
// What is real: the store (PGlite, or PostgreSQL when KILN_TEST_DATABASE_URL / KILN_BENCH_DATABASE_URL is
// set; a fresh database per run), the job door (submissions, placements, phases, results), the scheduler's
// passes (claim, fair order, placement, the placing transaction), the power manager's passes (the leader's
// decisions made durable as wake/sleep requests, wakes sent as Wake-on-LAN packets to a UDP socket of this
// process, sleeps delivered) and the leader's sweeps; all of them read a simulated clock. What is simulated:
// the agents (a host pool in this process standing in for the gateway: a `launch` starts the job at the
// simulated time, it ends after its run time with the result the agent would send; a `sleep` makes the host
// report asleep, a sent wake brings it back as a new connection after the wake latency) and time.
//
// Passes: the simulated clock advances in steps of BENCH_POWER_STEP_S (default 30 s; the server's own tick is
// 1 s, but a week of 1 s passes is 604,800 passes of ~20 statements each, too slow here). Within a step nothing
// changes that a pass would act on, so a step runs one scheduler pass, one power pass and one leader sweep,
// and a step where nothing happened (no arrival, no job end, no wake answered, nothing queued) runs only the
// power pass, and that only on whole simulated minutes. Queue times are therefore resolved to the step; the
// "added" figure subtracts each job's wait under always-on, measured the same way.
//
// Reports host-hours awake and the p50/p95/p99 queue time each job spent beyond what it spent with every
// host always on. BENCH_POWER_DAYS (default 7) shortens the simulated span for a quick look.
//
// Load model (seeded; xorshift32, seed 20261207): Monday 00:00 UTC to Sunday 24:00.
//  - Weekdays 08:00-19:00: pushes arrive as a Poisson process at 0.4/min at 08:00 rising to 1/min at 10:00-12:00
//    and 14:00-17:00 (0.6/min over lunch, tailing to 0.25/min at 18:00-19:00); each push starts a burst of 3-12
//    jobs at once (peak demand ~70 of the fleet's 320 CPUs on average, with bursts well above it).
//  - Weekday evenings and nights: 0.03 pushes/min. Weekends: 0.01 pushes/min (an occasional push).
//  - Nightly builds: every day at 02:00, 40 jobs of 20-40 min, 4 CPUs each.
//  - Job size: 1 CPU (50%), 2 (30%), 4 (20%); 2 GiB per CPU; run time log-normal, median 4 min, capped at 30 min.
//  - Hosts: 20 × 16 CPUs / 64 GiB, amd64, Wake-on-LAN.
import { createSocket, type Socket } from 'node:dgram';
import { randomBytes } from 'node:crypto';
import { cpus } from 'node:os';
import { pino } from 'pino';
import pg from 'pg';
import { DEFAULT_POWER_POLICY, parseClock, parseDays, type PowerPolicy } from '../src/core/power.ts';
import { seededRandom } from '../src/core/seeded-random.ts';
import type { ServerMessage, HostCapacity, HostPowerMsg } from '../src/core/agent-protocol.ts';
import type { Resources } from '../src/core/host.ts';
import { openStore, type Store } from '../src/store/store.ts';
import { connectHost, touchHosts } from '../src/store/hosts.ts';
import { markAsleep } from '../src/store/power.ts';
import { ServerEventBus } from '../src/server/events.ts';
import { makeMetrics } from '../src/server/metrics.ts';
import { makeAuthenticator } from '../src/server/http/auth.ts';
import { DEFAULT_SERVER_OPTIONS, type ServerContext } from '../src/server/context.ts';
import { DEFAULT_BODY_INTAKE, makeBodyIntake } from '../src/server/http/body-intake.ts';
import { makeJobCommands } from '../src/server/jobs/job-commands.ts';
import { makeScheduler } from '../src/server/scheduler/scheduler.ts';
import type { HostPool, LaunchedJob, PoolHost } from '../src/server/scheduler/host-pool.ts';
import type { HostSlot } from '../src/server/scheduler/placement.ts';
import { makePowerManager } from '../src/server/power/manager.ts';
import { makeLeader } from '../src/server/leader.ts';

const GiB = 1024 ** 3;
const MIN = 60_000;
const HOUR = 60 * MIN;
const STEP = Number(process.env.BENCH_POWER_STEP_S ?? 30) * 1000;
const DAYS = Number(process.env.BENCH_POWER_DAYS ?? 7);
const START = Date.parse('2026-12-07T00:00:00Z'); // a Monday
const WEEK = 7 * 24 * HOUR;
const SPAN = DAYS * 24 * HOUR;
const HOSTS = 20;
const HOST_CPUS = 16;
const pgUrl = process.env.KILN_BENCH_DATABASE_URL ?? process.env.KILN_TEST_DATABASE_URL;

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

/** The simulated agents: a host pool the scheduler and the power manager use as they use the gateway's. */
class SimHost implements PoolHost {
  readonly active: Map<number, LaunchedJob> = new Map();
  readonly stopping = new Set<number>();
  schedulable = true;
  constructor(
    readonly hostId: number,
    readonly name: string,
    readonly onMessage: (h: SimHost, m: ServerMessage) => void,
  ) {}
  send(m: ServerMessage): void {
    this.onMessage(this, m);
  }
  used(): Resources {
    const u = { cpus: 0, memoryBytes: 0, diskBytes: 0 };
    for (const j of this.active.values()) {
      u.cpus += j.cpus;
      u.memoryBytes += j.memoryBytes;
      u.diskBytes += j.diskBytes;
    }
    return u;
  }
}

const CAP: Resources = { cpus: HOST_CPUS, memoryBytes: HOST_CPUS * 4 * GiB, diskBytes: 1000 * GiB };

class SimPool implements HostPool {
  readonly links = new Map<number, SimHost>();
  get(id: number): SimHost | undefined {
    return this.links.get(id);
  }
  slots(): HostSlot[] {
    return [...this.links.values()]
      .filter((l) => l.schedulable)
      .map((l) => {
        const u = l.used();
        return { id: l.hostId, arch: 'amd64', labels: [], capacity: CAP, free: { cpus: CAP.cpus - u.cpus, memoryBytes: CAP.memoryBytes - u.memoryBytes, diskBytes: CAP.diskBytes - u.diskBytes } };
      });
  }
}

async function freshStore(): Promise<{ store: Store; drop(): Promise<void> }> {
  if (!pgUrl) return { store: await openStore({}), drop: async () => {} };
  const name = `kiln_bench_${randomBytes(5).toString('hex')}`;
  const admin = new pg.Client({ connectionString: pgUrl });
  await admin.connect();
  await admin.query(`CREATE DATABASE ${name}`);
  await admin.end();
  const u = new URL(pgUrl);
  u.pathname = `/${name}`;
  const store = await openStore({ databaseUrl: u.toString(), poolSize: 5 });
  return {
    store,
    async drop() {
      await store.close();
      const c = new pg.Client({ connectionString: pgUrl });
      await c.connect();
      await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      await c.end();
    },
  };
}

interface RunResult {
  awakeHostHours: number;
  wait: Map<number, number>;
  wakes: number;
  passes: number;
  wallS: number;
}

async function simulate(jobs: SimJob[], policy: Policy, wakeLatencyMs: number, udp: { socket: Socket; port: number; received: () => number }): Promise<RunResult> {
  const wall = performance.now();
  const { store, drop } = await freshStore();
  let t = START;
  const now = () => t;
  const serverId = `bench-${randomBytes(3).toString('hex')}`;
  const events = new ServerEventBus();
  const ctx: ServerContext = {
    serverId,
    store,
    log: pino({ level: process.env.BENCH_POWER_DEBUG ? 'warn' : 'silent' }),
    events,
    metrics: makeMetrics(async () => 0),
    auth: makeAuthenticator(store.db),
    // The leader's sweep must not expire hosts for real time passing slowly: hosts are touched every step.
    options: { ...DEFAULT_SERVER_OPTIONS, batchSize: 1000 },
    bodies: makeBodyIntake(DEFAULT_BODY_INTAKE),
  };
  const door = makeJobCommands(ctx);
  const pool = new SimPool();
  const scheduler = makeScheduler(ctx, pool, door, { now });
  const leader = makeLeader(ctx, door);
  const power = makePowerManager(ctx, {
    registry: pool,
    isLeader: () => true,
    kick: () => {},
    options: { policy: policy.power ?? { ...DEFAULT_POWER_POLICY, pools: [] }, now },
  });

  const byKilnId = new Map<number, SimJob>();
  const wait = new Map<number, number>();
  /** Jobs running on the simulated hosts: kiln job id → when it ends (simulated ms). */
  const running = new Map<number, { hostId: number; attempt: number; endsAt: number }>();
  const launched: { hostId: number; jobId: number; attempt: number }[] = [];
  const sleeping: { host: SimHost; requestId: number }[] = [];
  /** Hosts asleep in the simulation (the store says asleep or waking), and when a sent wake brings each back. */
  const asleep = new Set<number>();
  const wakeDue = new Map<number, number>();
  let wakes = 0;
  const onMessage = (h: SimHost, m: ServerMessage) => {
    if (m.type === 'launch') launched.push({ hostId: h.hostId, jobId: m.jobId, attempt: m.attempt });
    else if (m.type === 'sleep') sleeping.push({ host: h, requestId: m.requestId });
  };
  events.on('power.wake_sent', (e) => {
    wakes++;
    wakeDue.set(e.hostId, t + wakeLatencyMs);
  });
  const mac = (i: number) => `52:54:00:00:00:${i.toString(16).padStart(2, '0')}`;
  const powerMsg = (i: number): HostPowerMsg => ({ driver: 'wol', mac: mac(i), broadcast: '127.0.0.1', port: udp.port });
  const cap = (i: number): HostCapacity => ({ name: `h${String(i).padStart(2, '0')}`, arch: 'amd64', ...CAP, accel: 'kvm', labels: [], driver: 'sim', agentVersion: 'bench' });
  const connect = async (i: number) => {
    const host = await connectHost(store.db, cap(i), serverId, undefined, powerMsg(i));
    pool.links.set(host.id, new SimHost(host.id, host.name, onMessage));
    power.connected(host.id, host.woke ? { latencyMs: host.woke.latencyMs, jobs: host.woke.jobs } : undefined);
    return host.id;
  };
  const index = new Map<number, number>();
  for (let i = 1; i <= HOSTS; i++) index.set(await connect(i), i);

  let next = 0;
  let awakeMs = 0;
  let passes = 0;
  try {
    for (; t < START + SPAN + 6 * HOUR; t += STEP) {
      let happened = false;
      // Arrivals: submitted through the job door.
      const arriving: SimJob[] = [];
      while (next < jobs.length && jobs[next]!.arrival <= t) arriving.push(jobs[next++]!);
      if (arriving.length > 0) {
        happened = true;
        const made = await door.submit(
          arriving.map((j) => ({
            tenant: 'default',
            requirements: { arch: 'amd64', cpus: j.cpus, memoryBytes: j.cpus * 2 * GiB, diskBytes: 10 * GiB, hostLabels: [] },
            labels: [],
            image: 'minimal',
            command: ['true'],
            env: {},
            timeoutMs: 3_600_000,
            network: 'none',
            priority: 0,
          })),
        );
        made.forEach((k, i) => byKilnId.set(k.id, arriving[i]!));
      }
      // Jobs whose run time is over: the agent's result, as the gateway stores it.
      const ended = [...running].filter(([, r]) => r.endsAt <= t);
      if (ended.length > 0) {
        happened = true;
        const changes = await door.storeResults(ended.map(([jobId, r]) => ({ hostId: r.hostId, r: { jobId, attempt: r.attempt, outcome: 'exited', exitCode: 0, logChunks: 0 } })));
        ended.forEach(([jobId, r], i) => {
          running.delete(jobId);
          pool.get(r.hostId)?.active.delete(jobId);
          const c = changes[i];
          if (c) door.finished(r.hostId, c);
        });
      }
      // Hosts asked to sleep drain (the policy picks idle ones), report, and go.
      for (const s of sleeping.splice(0)) {
        if (s.host.active.size > 0) {
          sleeping.push(s);
          continue;
        }
        if (await markAsleep(store.db, s.host.hostId, serverId, s.requestId, powerMsg(index.get(s.host.hostId)!))) {
          pool.links.delete(s.host.hostId);
          asleep.add(s.host.hostId);
        }
      }
      // Woken hosts whose latency is over connect again (answering their wake).
      for (const [id, due] of wakeDue) {
        if (due > t) continue;
        wakeDue.delete(id);
        asleep.delete(id);
        await connect(index.get(id)!);
        happened = true;
      }
      const queued = byKilnId.size > wait.size;
      if (happened || queued) {
        await scheduler.pass();
        const started = launched.splice(0);
        for (const l of started) {
          const j = byKilnId.get(l.jobId)!;
          wait.set(j.id, t - j.arrival);
          running.set(l.jobId, { hostId: l.hostId, attempt: l.attempt, endsAt: t + j.runMs });
        }
        // The agent's phase report (the guest is up, the command started), as the phase writer stores it.
        if (started.length > 0) await door.applyPhases(started.map((l) => ({ jobId: l.jobId, attempt: l.attempt, hostId: l.hostId, phase: 'running' as const })));
        await touchHosts(store.db, serverId, [...pool.links.keys()]);
        await leader.sweep();
        passes++;
      }
      if (policy.power && (happened || queued || (t - START) % MIN === 0)) {
        await power.tick();
        const d = power.lastDecision();
        if (process.env.BENCH_POWER_DEBUG && d && (d.sleep.length > 0 || d.wake.length > 0)) console.error(new Date(t).toISOString(), 'decision', JSON.stringify(d));
      }
      if (process.env.BENCH_POWER_DEBUG && (t - START) % HOUR === 0) {
        const rows = await store.db.selectFrom('hosts').select(['name', 'state']).execute();
        const act = await store.db.selectFrom('jobs').select(['state']).where('state', 'in', ['queued', 'placed', 'booting', 'running']).execute();
        const by = (xs: { state: string }[]) => Object.entries(xs.reduce<Record<string, number>>((m, x) => ((m[x.state] = (m[x.state] ?? 0) + 1), m), {}));
        const reqs = await store.db.selectFrom('power_requests').select(['kind', 'state', 'error']).execute();
        console.error(JSON.stringify(by(reqs.map((r) => ({ state: `${r.kind}/${r.state}/${r.error ?? ''}` })))));
        console.error(new Date(t).toISOString(), policy.name, 'hosts', JSON.stringify(by(rows)), 'jobs', JSON.stringify(by(act)), 'sim asleep', asleep.size, 'running', running.size, 'pending sleeps', sleeping.length);
      }
      if (t < START + SPAN) awakeMs += (HOSTS - asleep.size + wakeDue.size) * STEP;
    }
  } finally {
    await scheduler.stop();
    await power.stop();
    await drop();
  }
  return { awakeHostHours: awakeMs / HOUR, wait, wakes, passes, wallS: (performance.now() - wall) / 1000 };
}

function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] ?? 0;
}

async function main(): Promise<void> {
  const jobs = loadModel(20261207).filter((j) => j.arrival < START + SPAN);
  const socket = createSocket('udp4');
  let received = 0;
  socket.on('message', () => received++);
  const port = await new Promise<number>((resolve) => socket.bind(0, '127.0.0.1', () => resolve(socket.address().port)));
  const udp = { socket, port, received: () => received };
  console.log(
    `kiln bench:power — ${jobs.length} jobs over ${DAYS} simulated day(s), ${HOSTS} hosts × ${HOST_CPUS} CPUs, ${STEP / 1000} s steps, store ${pgUrl ? 'postgres' : 'pglite'}; ${cpus().length} CPUs (${cpus()[0]?.model ?? '?'}), Node ${process.version}`,
  );
  const rows: string[] = ['| wake latency | policy | host-hours awake | vs always on | added queue p50 / p95 / p99 | wakes | passes | wall |', '|---|---|---|---|---|---|---|---|'];
  const base = await simulate(jobs, POLICIES[0]!, 30_000, udp);
  for (const latency of [30_000, 120_000]) {
    for (const p of POLICIES) {
      const r = p === POLICIES[0] ? base : await simulate(jobs, p, latency, udp);
      const added = jobs.map((j) => Math.max(0, (r.wait.get(j.id) ?? Infinity) - (base.wait.get(j.id) ?? 0)) / 1000);
      const unplaced = jobs.filter((j) => !r.wait.has(j.id)).length;
      const row = `| ${latency / 1000} s | ${p.name} | ${r.awakeHostHours.toFixed(0)} | ${((100 * r.awakeHostHours) / base.awakeHostHours).toFixed(0)}% | ${pct(added, 50).toFixed(0)} / ${pct(added, 95).toFixed(0)} / ${pct(added, 99).toFixed(0)} s${unplaced ? ` (${unplaced} never ran)` : ''} | ${r.wakes} | ${r.passes} | ${r.wallS.toFixed(0)} s |`;
      rows.push(row);
      console.log(row);
    }
  }
  console.log(`magic packets received: ${received}`);
  console.log(rows.join('\n'));
  socket.close();
}

await main();
