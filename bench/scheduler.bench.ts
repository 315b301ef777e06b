// npm run bench:scheduler — the control plane under a simulated fleet.
//
// A real `kiln server` process (built CLI) on the embedded store and then on PostgreSQL (when
// KILN_TEST_DATABASE_URL or KILN_BENCH_DATABASE_URL is set); 1,000 simulated agents in this process that
// speak the real protocol over real WebSockets and run the in-memory VM driver. Prints:
//   - p50/p99 submit→placed latency at a steady 200 jobs/s (submit = HTTP request sent; placed = the agent
//     received `launch`);
//   - p50/p99 submit→running at the same rate (running = the simulated guest starts the job's command: with
//     the start lease, after the control plane has recorded that it may start);
//   - placements/s for a burst of 10,000 mixed jobs (first to last placement, as seen by the agents);
//   - packing efficiency at saturation = jobs placed ÷ jobs an offline first-fit-decreasing places on the
//     same hosts (measured in this run), and the CPU share each achieves;
//   - the server's RSS (current and peak, and after connecting, the steady rate and the burst);
//   - the server's CPU time per job in each phase (steadier than the wall-clock figures on a shared machine).
// Env: BENCH_HOSTS (1000), BENCH_JOBS (10000), BENCH_RATE (200), BENCH_RATE_SECONDS (10).
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { cpus, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { freePort } from '../test/agent/processes.ts';
import { KILN_NODE_ARGS } from '../test/support/kiln.ts';
import { pino } from 'pino';
import pg from 'pg';
import { Agent as HttpAgent, setGlobalDispatcher } from 'undici';
import { makeAgent, type Agent } from '../src/agent/agent.ts';
import { memoryImageResolver } from '../src/agent/images.ts';
import { makeMemoryDriver } from '../src/vm/memory-driver.ts';
import type { VmDriver } from '../src/vm/driver.ts';
import { makeApiClient, type ApiClient } from '../test/support/test-client.ts';
import { makeSecret } from '../src/store/tokens.ts';
import { firstFitDecreasing, placeJobs, type HostSlot, type JobDemand } from '../src/server/scheduler/placement.ts';
import type { Arch } from '../src/core/arch.ts';
import { pickOne, seededRandom } from '../src/core/seeded-random.ts';

const GiB = 1024 ** 3;
const HOSTS = Number(process.env.BENCH_HOSTS ?? 1000);
const JOBS = Number(process.env.BENCH_JOBS ?? 10_000);
const RATE = Number(process.env.BENCH_RATE ?? 200);
const RATE_SECONDS = Number(process.env.BENCH_RATE_SECONDS ?? 10);
const pgUrl = process.env.KILN_BENCH_DATABASE_URL ?? process.env.KILN_TEST_DATABASE_URL;

// Ctrl-C and kill end the process through 'exit', where the servers it started are killed.
for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => process.exit(130));

const rng = seededRandom;
const pick = pickOne;
const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] ?? NaN;
};

interface HostSpec {
  name: string;
  arch: Arch;
  cpus: number;
  memoryBytes: number;
}
function makeFleet(): HostSpec[] {
  const r = rng(42);
  return Array.from({ length: HOSTS }, (_, i) => {
    const c = pick(r, [16, 32, 48, 64]);
    return { name: `sim-${i}`, arch: r() < 0.6 ? 'amd64' : 'arm64', cpus: c, memoryBytes: c * 4 * GiB };
  });
}
interface JobSpecB {
  arch: Arch;
  cpus: number;
  memoryGiB: number;
}
function makeBurst(): JobSpecB[] {
  const r = rng(7);
  return Array.from({ length: JOBS }, () => {
    const c = pick(r, [1, 1, 2, 2, 4, 8, 16]);
    return { arch: r() < 0.6 ? 'amd64' : 'arm64', cpus: c, memoryGiB: c * pick(r, [1, 2, 4]) };
  });
}

/** CPU time the process has used (user + system), in ms: steadier than wall-clock times on a shared machine. */
function cpuMs(pid: number): number {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return ((Number(f[11]) + Number(f[12])) * 1000) / 100; // utime, stime in clock ticks (USER_HZ = 100)
}

function rss(pid: number): { rssMB: number; peakMB: number } {
  const st = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (k: string) => Number(new RegExp(`${k}:\\s+(\\d+)`).exec(st)?.[1] ?? 0) / 1024;
  return { rssMB: Math.round(kb('VmRSS')), peakMB: Math.round(kb('VmHWM')) };
}

async function startServer(kind: 'pglite' | 'postgres', dir: string, admin: string, dbUrl?: string): Promise<{ proc: ChildProcess; url: string }> {
  const port = await freePort();
  // The server starts as the installed `kiln` does (bin/kiln.js's node flags), plus BENCH_SERVER_NODE_ARGS.
  const nodeArgs = [...KILN_NODE_ARGS, ...(process.env.BENCH_SERVER_NODE_ARGS?.split(' ').filter(Boolean) ?? [])];
  const proc = spawn(process.execPath, [...nodeArgs, 'bin/kiln.js', 'server', '--listen', `127.0.0.1:${port}`, '--data-dir', dir, '--log-level', process.env.BENCH_SERVER_LOG ?? 'warn'], {
    env: { ...process.env, KILN_ADMIN_TOKEN: admin, ...(kind === 'postgres' && dbUrl ? { KILN_DATABASE_URL: dbUrl } : { KILN_DATABASE_URL: '' }) },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  // A bench stopped early (Ctrl-C, a closed pipe) takes its server and its data directory with it.
  const killServer = () => {
    proc.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  };
  process.once('exit', killServer);
  proc.once('exit', () => process.off('exit', killServer));
  let err = '';
  await new Promise<void>((resolve, reject) => {
    proc.stderr!.on('data', (d: Buffer) => {
      if (process.env.BENCH_SERVER_LOG) process.stderr.write(d);
      err += d.toString();
      if (/listening at/.test(err)) resolve();
    });
    proc.once('exit', (c) => reject(new Error(`server exited (${c}): ${err}`)));
  });
  return { proc, url: `http://127.0.0.1:${port}` };
}

/** Records when each job's command starts in its (simulated) guest: the driver's running() callback. */
function timedStarts(d: VmDriver, starts: Map<number, number>): VmDriver {
  return {
    ...d,
    capabilities: () => d.capabilities(),
    list: () => d.list(),
    sweep: () => d.sweep(),
    start: (spec, out) =>
      d.start(spec, {
        ...out,
        running: () => {
          starts.set(Number(spec.id.split('-')[1]), performance.now());
          out.running?.();
        },
      }),
  };
}

async function runOne(kind: 'pglite' | 'postgres'): Promise<Record<string, number | string>> {
  const dir = mkdtempSync(join(tmpdir(), 'kiln-bench-'));
  const admin = makeSecret('admin');
  let dbName: string | undefined;
  let dbUrl: string | undefined;
  if (kind === 'postgres') {
    dbName = `kiln_bench_${Date.now()}`;
    const c = new pg.Client({ connectionString: pgUrl });
    await c.connect();
    await c.query(`CREATE DATABASE ${dbName}`);
    await c.end();
    const u = new URL(pgUrl!);
    u.pathname = `/${dbName}`;
    dbUrl = u.toString();
  }
  const { proc, url } = await startServer(kind, dir, admin, dbUrl);
  const client: ApiClient = makeApiClient({ server: url, token: admin });
  const agents: Agent[] = [];
  const launches = new Map<number, number>(); // jobId -> time the agent received launch
  const starts = new Map<number, number>(); // jobId -> time the guest started the job's command
  const finished = { n: 0 };
  try {
    const { secret } = await client.request<{ secret: string }>('POST', '/v1/tokens', { name: 'bench', role: 'agent' });
    const fleet = makeFleet();
    const logger = pino({ level: 'silent' });
    const tConnect = performance.now();
    for (let i = 0; i < fleet.length; i += 50) {
      await Promise.all(
        fleet.slice(i, i + 50).map(async (h) => {
          const a = makeAgent({
            servers: [url],
            token: secret,
            name: h.name,
            arch: h.arch,
            cpus: h.cpus,
            memoryBytes: h.memoryBytes,
            diskBytes: 10_000 * GiB,
            driver: timedStarts(makeMemoryDriver({ arches: [h.arch], cpus: h.cpus, memoryBytes: h.memoryBytes, diskFreeBytes: 10_000 * GiB }), starts),
            images: memoryImageResolver,
            logger,
            silenceMs: 120_000,
          });
          a.events.on('launched', ({ jobId }) => launches.set(jobId, performance.now()));
          a.events.on('finished', () => finished.n++);
          agents.push(a);
          const c = a.connected(120_000);
          await a.start();
          await c;
        }),
      );
    }
    const connectS = (performance.now() - tConnect) / 1000;
    const rssConnected = rss(proc.pid!).rssMB;
    // What the connected fleet costs with nothing to schedule (heartbeats, status reports, polls).
    const idleS = Number(process.env.BENCH_IDLE_SECONDS ?? 3);
    const cpuIdle0 = cpuMs(proc.pid!);
    await new Promise((r) => setTimeout(r, idleS * 1000));
    const cpuIdlePct = ((cpuMs(proc.pid!) - cpuIdle0) / (idleS * 1000)) * 100;

    // 1. Latency at a steady rate: short jobs, submitted one request each.
    const submitAt = new Map<number, number>();
    const answered: number[] = [];
    const total = RATE * RATE_SECONDS;
    const cpuSteady0 = cpuMs(proc.pid!);
    const monoSteady0 = process.hrtime.bigint() / 1000n;
    const t0 = performance.now();
    const inflight: Promise<void>[] = [];
    for (let i = 0; i < total; i++) {
      const due = t0 + (i * 1000) / RATE;
      const wait = due - performance.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      const sent = performance.now();
      inflight.push(
        client.request<{ id: number }>('POST', '/v1/jobs', { command: ['sleep', '0.5'], cpus: 1 + (i % 2), memory: '1G', labels: [i % 3 === 0 ? 'kiln-arm64' : 'kiln'] }).then((j) => {
          submitAt.set(j.id, sent);
          answered.push(performance.now() - sent);
        }),
      );
    }
    await Promise.all(inflight);
    const achievedRate = total / ((performance.now() - t0) / 1000);
    while ([...submitAt.keys()].some((id) => !launches.has(id))) await new Promise((r) => setTimeout(r, 50));
    const lat = [...submitAt].map(([id, s]) => launches.get(id)! - s);
    while ([...submitAt.keys()].some((id) => !starts.has(id))) await new Promise((r) => setTimeout(r, 50));
    const latRun = [...submitAt].map(([id, s]) => starts.get(id)! - s);
    if (process.env.BENCH_DEBUG) {
      const m = await (await fetch(`${url}/metrics`)).text();
      console.log(m.split('\n').filter((l) => /kiln_submit_to_placed|kiln_placements_total|event_loop_lag_p99|cpu_seconds|heap_size_used|heap_size_total|external_memory|resident_memory/.test(l)).join('\n'));
    }
    while (finished.n < total) await new Promise((r) => setTimeout(r, 50));
    const rssSteady = rss(proc.pid!).rssMB;
    const cpuSteady = cpuMs(proc.pid!) - cpuSteady0;
    const monoSteady1 = process.hrtime.bigint() / 1000n;

    // 2. Burst: 10,000 long jobs of mixed sizes, more than the fleet holds.
    const burst = makeBurst();
    const before = launches.size;
    const cpuBurst0 = cpuMs(proc.pid!);
    const tBurst = performance.now();
    const monoBurst0 = process.hrtime.bigint() / 1000n; // CLOCK_MONOTONIC µs, the clock of a --cpu-prof profile
    // All at once: ten batch requests of 1,000 jobs in flight together.
    const batches: Promise<{ ids: number[] }>[] = [];
    for (let i = 0; i < burst.length; i += 1000) {
      batches.push(
        client.request<{ ids: number[] }>('POST', '/v1/jobs/batch', {
          jobs: burst.slice(i, i + 1000).map((j) => ({ command: ['sleep', 'infinity'], arch: j.arch, cpus: j.cpus, memory: j.memoryGiB * GiB, disk: GiB })),
        }),
      );
    }
    const ids = (await Promise.all(batches)).flatMap((r) => r.ids);
    const submitS = (performance.now() - tBurst) / 1000;
    // Saturation: no new placement for 3 s.
    let last = launches.size;
    let lastChange = performance.now();
    while (performance.now() - lastChange < 3000) {
      await new Promise((r) => setTimeout(r, 100));
      if (launches.size !== last) {
        last = launches.size;
        lastChange = performance.now();
      }
    }
    const burstIds = new Set(ids);
    const burstTimes = [...launches].filter(([id]) => burstIds.has(id)).map(([, t]) => t);
    const placed = burstTimes.length;
    const firstT = Math.min(...burstTimes);
    const lastT = Math.max(...burstTimes);
    const mem = rss(proc.pid!);
    const cpuBurst = cpuMs(proc.pid!) - cpuBurst0;
    void before;
    // With BENCH_SERVER_NODE_ARGS=--cpu-prof, these cut the server's profile into phases (bench/cpu-profile.mjs).
    if (process.env.BENCH_DEBUG) console.log(`monotonic µs: steady ${monoSteady0}-${monoSteady1}, burst ${monoBurst0}-${process.hrtime.bigint() / 1000n}`);

    // The offline yardstick on the same hosts and jobs.
    const hosts: HostSlot[] = fleet.map((h, i) => ({
      id: i + 1,
      arch: h.arch,
      labels: [],
      capacity: { cpus: h.cpus, memoryBytes: h.memoryBytes, diskBytes: 10_000 * GiB },
      free: { cpus: h.cpus, memoryBytes: h.memoryBytes, diskBytes: 10_000 * GiB },
    }));
    const demands: JobDemand[] = burst.map((j, i) => ({ id: i + 1, tenant: 't', arch: j.arch, cpus: j.cpus, memoryBytes: j.memoryGiB * GiB, diskBytes: GiB, hostLabels: [] }));
    const ffd = firstFitDecreasing(hosts, demands).placements;
    const offlineBestFit = placeJobs(hosts, demands).placements;
    const cpuOf = (ps: { jobId: number }[]) => ps.reduce((s, p) => s + demands[p.jobId - 1]!.cpus, 0);
    const capCpus = fleet.reduce((s, h) => s + h.cpus, 0);
    const placedCpus = [...launches].filter(([id]) => burstIds.has(id)).reduce((s, [id]) => s + burst[ids.indexOf(id)]!.cpus, 0);
    return {
      store: kind,
      hosts: HOSTS,
      'agents connected in (s)': connectS.toFixed(1),
      'steady rate achieved (jobs/s)': achievedRate.toFixed(0),
      'submit→placed p50 (ms)': pct(lat, 50).toFixed(1),
      'submit→placed p99 (ms)': pct(lat, 99).toFixed(1),
      'submit→running p50 (ms)': pct(latRun, 50).toFixed(1),
      'submit→running p99 (ms)': pct(latRun, 99).toFixed(1),
      'submit HTTP answer p50 / p99 (ms)': `${pct(answered, 50).toFixed(1)} / ${pct(answered, 99).toFixed(1)}`,
      'burst jobs': JOBS,
      'burst submit (s)': submitS.toFixed(2),
      'burst placed': placed,
      'placements/s (first→last placement)': (placed / Math.max(0.001, (lastT - firstT) / 1000)).toFixed(0),
      'placements/s (submit start→last placement)': (placed / ((lastT - tBurst) / 1000)).toFixed(0),
      'FFD places (offline)': ffd.length,
      'packing efficiency (placed/FFD)': (placed / ffd.length).toFixed(3),
      'CPU share used: kiln / FFD': `${((placedCpus / capCpus) * 100).toFixed(1)}% / ${((cpuOf(ffd) / capCpus) * 100).toFixed(1)}%`,
      'offline best-fit (same policy, no timing) places': offlineBestFit.length,
      'server CPU with the fleet idle (% of a core)': cpuIdlePct.toFixed(0),
      'server CPU per job: steady / burst (ms)': `${(cpuSteady / total).toFixed(2)} / ${(cpuBurst / JOBS).toFixed(2)}`,
      'server RSS now / peak (MB)': `${mem.rssMB} / ${mem.peakMB}`,
      'server RSS after connect / steady / burst (MB)': `${rssConnected} / ${rssSteady} / ${mem.rssMB}`,
    };
  } finally {
    await Promise.all(agents.map((a) => a.stop()));
    proc.kill('SIGTERM');
    await once(proc, 'exit').catch(() => {});
    rmSync(dir, { recursive: true, force: true });
    if (dbName) {
      const c = new pg.Client({ connectionString: pgUrl });
      await c.connect();
      await c.query(`DROP DATABASE IF EXISTS ${dbName} WITH (FORCE)`);
      await c.end();
    }
  }
}

// Keep-alive connections, a bounded number of them: 200 jobs/s should not mean 200 new TCP connections/s.
setGlobalDispatcher(new HttpAgent({ connections: 64, keepAliveTimeout: 30_000 }));
spawnSync(process.execPath, ['scripts/build.mjs'], { stdio: 'inherit' });
console.log(`machine: ${cpus()[0]?.model ?? '?'} × ${cpus().length} cores, ${(totalmem() / GiB).toFixed(0)} GiB, Node ${process.version}`);
console.log(`server: node ${[...KILN_NODE_ARGS, process.env.BENCH_SERVER_NODE_ARGS ?? ''].join(' ').trim()} bin/kiln.js server`);
console.log(`targets: ≥ 5000 placements/s, p99 ≤ 50 ms, packing ≥ 0.97, RSS ≤ 300 MB`);
const only = process.env.BENCH_STORE;
const kinds = (['pglite', ...(pgUrl ? (['postgres'] as const) : [])] as ('pglite' | 'postgres')[]).filter((k) => !only || k === only);
if (!pgUrl) console.log('(PostgreSQL run skipped: set KILN_TEST_DATABASE_URL or KILN_BENCH_DATABASE_URL)');
for (const k of kinds) {
  const r = await runOne(k);
  console.log(`\n== ${k}`);
  for (const [key, v] of Object.entries(r)) console.log(`  ${key.padEnd(48)} ${v}`);
}
process.exit(0);
