// npm run bench:dashboard — the dashboard against a big fleet and a long history.
//
// A real `kiln server` process (built CLI, embedded store) whose store is seeded with 100,000 finished jobs
// over the last 30 days (and 200 queued), and 1,000 simulated agents in this process (real protocol, real
// WebSockets, the in-memory driver). Chromium (Debian's, over the DevTools protocol) opens the dashboard.
// Prints:
//   - time to first render of the fleet, queue and usage pages: navigation start to the page's data drawn,
//     median of 5 fresh tabs each (target: ≤ 1 s);
//   - the server's CPU per connected dashboard per second while jobs run at 200 jobs/s: the server's CPU
//     with V dashboards open minus with none, each taken per job submitted and scaled to 200 jobs/s (so a
//     phase whose submissions fell behind is not counted as cheaper), ÷ V (target: ≤ 1% of a core), for
//     dashboards on the jobs page and on the fleet page; each viewer phase against the no-dashboard phase of its round;
//   - the baselines measured in the same run: first render of the sign-in page (same bundle, no data) and the
//     server's CPU at 200 jobs/s with no dashboard; and the machine.
// Env: BENCH_HOSTS (1000), BENCH_HISTORY (100000), BENCH_RATE (200), BENCH_RATE_SECONDS (10), BENCH_VIEWERS (3),
// BENCH_CPU_ROUNDS (2), BENCH_STORE (pglite; postgres: on KILN_BENCH_DATABASE_URL or KILN_TEST_DATABASE_URL), BENCH_PIN (unset; 1: the server alone on CPU 0, everything else on the other CPUs).
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, mkdirSync } from 'node:fs';
import { cpus, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { readFileSync } from 'node:fs';
import { sql } from 'kysely';
import pg from 'pg';
import { pino } from 'pino';
import { chromium, type Browser, type Page } from 'playwright-core';
import { Agent as HttpAgent, setGlobalDispatcher } from 'undici';
import { buildDashboard } from '../scripts/build-dashboard.mjs';
import { freePort } from '../test/agent/processes.ts';
import { KILN_NODE_ARGS } from '../test/support/kiln.ts';
import { makeAgent, type Agent } from '../src/agent/agent.ts';
import { memoryImageResolver } from '../src/agent/images.ts';
import { makeMemoryDriver } from '../src/vm/memory-driver.ts';
import { makeApiClient } from '../test/support/test-client.ts';
import { makeSecret } from '../src/store/tokens.ts';
import { openStore } from '../src/store/store.ts';

const GiB = 1024 ** 3;
const HOSTS = Number(process.env.BENCH_HOSTS ?? 1000);
const HISTORY = Number(process.env.BENCH_HISTORY ?? 100_000);
const RATE = Number(process.env.BENCH_RATE ?? 200);
const RATE_SECONDS = Number(process.env.BENCH_RATE_SECONDS ?? 10);
const VIEWERS = Number(process.env.BENCH_VIEWERS ?? 3);
// Rounds of (no dashboard, jobs page, fleet page), alternating; each viewer phase is compared with the no-dashboard phase of its own round.
const CPU_ROUNDS = Math.max(1, Number(process.env.BENCH_CPU_ROUNDS ?? 2));
// The server on a core of its own (BENCH_PIN=1, needs taskset and 2+ cores): Chromium's and the agents' work
// then does not change how busy the server's core is between the phases with and without dashboards.
const PIN = process.env.BENCH_PIN === '1' && cpus().length >= 2;
if (PIN) spawnSync('taskset', ['-a', '-p', '-c', `1-${cpus().length - 1}`, String(process.pid)], { stdio: 'ignore' });
const CHROMIUM = process.env.KILN_CHROMIUM ?? '/usr/bin/chromium';

for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => process.exit(130));

// Keep-alive connections for the 200 requests/s, as bench:scheduler does (a new socket per request resets).
setGlobalDispatcher(new HttpAgent({ connections: 64, keepAliveTimeout: 30_000 }));

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? NaN;
function cpuMs(pid: number): number {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return ((Number(f[11]) + Number(f[12])) * 1000) / 100;
}

async function seed(dir: string, dbUrl: string | undefined): Promise<void> {
  const store = await openStore(dbUrl ? { databaseUrl: dbUrl, dataDir: join(dir, 'db') } : { dataDir: join(dir, 'db') });
  try {
    // 100,000 finished jobs, one every ~26 s over 30 days: 20 tenants, three label sets, 1 in 17 failing.
    const step = (30 * 86_400) / HISTORY;
    await sql`
      INSERT INTO jobs (tenant, state, arch, cpus, memory_bytes, disk_bytes, labels, image, command, timeout_ms, exit_code,
                        created_at, placed_at, booting_at, running_at, finished_at)
      SELECT 'team-' || (i % 20), CASE WHEN i % 17 = 0 THEN 'failed' ELSE 'succeeded' END,
        CASE WHEN i % 3 = 0 THEN 'arm64' ELSE 'amd64' END, 2, ${4 * GiB}, ${10 * GiB},
        CASE i % 3 WHEN 0 THEN '["kiln-arm64"]'::jsonb WHEN 1 THEN '["kiln"]'::jsonb ELSE '["kiln-4cpu-16gb"]'::jsonb END,
        'default', jsonb_build_array('make', 'test-' || (i % 50)), 3600000, CASE WHEN i % 17 = 0 THEN 1 ELSE 0 END,
        t, t + make_interval(secs => (i % 40) * 0.5::float8), t + make_interval(secs => (i % 40) * 0.5 + 0.1),
        t + make_interval(secs => (i % 40) * 0.5 + 2.5), t + make_interval(secs => (i % 40) * 0.5 + 2.5 + (i % 300))
      FROM generate_series(1, ${HISTORY}) AS i, LATERAL (SELECT now() - make_interval(secs => i * ${step}::float8) AS t) x`.execute(store.db);
    // 200 waiting jobs no host can take (no host has the label), so the queue page has reasons to show.
    await sql`
      INSERT INTO jobs (tenant, state, arch, cpus, memory_bytes, disk_bytes, host_labels, labels, image, command, timeout_ms)
      SELECT 'team-' || (i % 5), 'queued', 'amd64', 2, ${4 * GiB}, ${10 * GiB}, '["gpu"]'::jsonb, '["kiln"]'::jsonb, 'default', '["true"]', 3600000
      FROM generate_series(1, 200) AS i`.execute(store.db);
    await sql`ANALYZE`.execute(store.db);
  } finally {
    await store.close();
  }
}

async function startServer(dir: string, admin: string, dbUrl: string | undefined): Promise<{ proc: ChildProcess; url: string }> {
  const port = await freePort();
  const argv = [...KILN_NODE_ARGS, 'bin/kiln.js', 'server', '--listen', `127.0.0.1:${port}`, '--data-dir', dir, '--log-level', 'warn'];
  // BENCH_PIN: the server alone on CPU 0; this process, its simulated agents and Chromium on the others.
  const proc = spawn(PIN ? 'taskset' : process.execPath, PIN ? ['-c', '0', process.execPath, ...argv] : argv, {
    env: { ...process.env, KILN_ADMIN_TOKEN: admin, KILN_DATABASE_URL: dbUrl ?? '' },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  process.once('exit', () => proc.kill('SIGKILL'));
  let err = '';
  await new Promise<void>((resolve, reject) => {
    proc.stderr!.on('data', (d: Buffer) => {
      err += d.toString();
      if (/listening at/.test(err)) resolve();
    });
    proc.once('exit', (c) => reject(new Error(`server exited (${c}): ${err}`)));
  });
  return { proc, url: `http://127.0.0.1:${port}` };
}

async function firstRender(browser: Browser, url: string, token: string, page: string, ready: string): Promise<number> {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  await ctx.addInitScript((t) => sessionStorage.setItem('kiln.token', t), token);
  const p = await ctx.newPage();
  const t0 = performance.now();
  await p.goto(`${url}/#/${page}`);
  await p.locator(ready).first().waitFor({ timeout: 60_000 });
  const ms = performance.now() - t0;
  await ctx.close();
  return ms;
}

let dropAtEnd: (() => Promise<void>) | undefined;
async function dropDatabase(base: string, name: string): Promise<void> {
  const c = new pg.Client({ connectionString: base });
  await c.connect();
  await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  await c.end();
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'kiln-bench-dash-'));
  process.once('exit', () => rmSync(dir, { recursive: true, force: true }));
  await buildDashboard('dist/dashboard');
  const admin = makeSecret('admin');
  const tSeed = performance.now();
  mkdirSync(dir, { recursive: true });
  // BENCH_STORE=postgres: a fresh database on KILN_BENCH_DATABASE_URL or KILN_TEST_DATABASE_URL's server.
  let dbUrl: string | undefined;
  if (process.env.BENCH_STORE === 'postgres') {
    const base = process.env.KILN_BENCH_DATABASE_URL ?? process.env.KILN_TEST_DATABASE_URL;
    if (!base) throw new Error('BENCH_STORE=postgres needs KILN_BENCH_DATABASE_URL or KILN_TEST_DATABASE_URL');
    const name = `kiln_bench_dash_${Date.now()}`;
    const c = new pg.Client({ connectionString: base });
    await c.connect();
    await c.query(`CREATE DATABASE ${name}`);
    await c.end();
    const u = new URL(base);
    u.pathname = `/${name}`;
    dbUrl = u.toString();
    dropAtEnd = () => dropDatabase(base, name);
  }
  await seed(dir, dbUrl);
  const seedS = (performance.now() - tSeed) / 1000;
  const { proc, url } = await startServer(dir, admin, dbUrl);
  const client = makeApiClient({ server: url, token: admin });
  const { secret: agentToken } = await client.request<{ secret: string }>('POST', '/v1/tokens', { name: 'bench', role: 'agent' });
  const { secret: viewer } = await client.request<{ secret: string }>('POST', '/v1/tokens', { name: 'bench viewer', role: 'viewer' });
  const agents: Agent[] = [];
  const logger = pino({ level: 'silent' });
  for (let i = 0; i < HOSTS; i += 50) {
    await Promise.all(
      Array.from({ length: Math.min(50, HOSTS - i) }, async (_, k) => {
        const n = i + k;
        const arch = n % 3 === 0 ? 'arm64' : 'amd64';
        const a = makeAgent({
          servers: [url],
          token: agentToken,
          name: `sim-${n}`,
          arch,
          cpus: 32,
          memoryBytes: 128 * GiB,
          diskBytes: 10_000 * GiB,
          driver: makeMemoryDriver({ arches: [arch], cpus: 32, memoryBytes: 128 * GiB, diskFreeBytes: 10_000 * GiB }),
          images: memoryImageResolver,
          logger,
          silenceMs: 120_000,
        });
        agents.push(a);
        const c = a.connected(120_000);
        await a.start();
        await c;
      }),
    );
  }
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu'] });
  const results: Record<string, string> = {};
  const note = (k: string, v: string) => {
    results[k] = v;
    console.log(`  ${k}: ${v}`);
  };
  console.log(`dashboard bench: ${HOSTS} hosts connected, ${HISTORY} jobs of history (seeded in ${seedS.toFixed(1)} s)`);
  try {
    // 1. First render, median of 5 fresh tabs per page.
    // Baseline in the same run: the sign-in page (the same bundle, no data, no token).
    const baseline: number[] = [];
    for (let i = 0; i < 5; i++) {
      const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
      const p = await ctx.newPage();
      const t0 = performance.now();
      await p.goto(url);
      await p.getByLabel('kiln token').waitFor();
      baseline.push(performance.now() - t0);
      await ctx.close();
    }
    note('first render of the sign-in page (baseline, median of 5)', `${median(baseline).toFixed(0)} ms (${baseline.map((t) => t.toFixed(0)).join(', ')})`);
    const pages = [
      ['fleet', '[data-host="sim-0"]'],
      ['queue', '[data-queued]'],
      ['usage', '[data-usage-total]'],
    ] as const;
    for (const [name, ready] of pages) {
      const times: number[] = [];
      for (let i = 0; i < 5; i++) times.push(await firstRender(browser, url, viewer, name, ready));
      note(`first render ${name} (median of 5)`, `${median(times).toFixed(0)} ms, ${(median(times) / median(baseline)).toFixed(2)}× the baseline (${times.map((t) => t.toFixed(0)).join(', ')})`);
    }

    // 2. Server CPU at 200 jobs/s with no dashboard, then with VIEWERS dashboards on a page.
    // The server's CPU per second at RATE jobs/s, from its CPU per job: when Chromium slows this process's
    // submissions below RATE, CPU per wall second would fall with the rate and hide the viewers' cost.
    const steady = async (): Promise<{ perS: number; rate: number; seconds: number }> => {
      const c0 = cpuMs(proc.pid!);
      const t0 = performance.now();
      const inflight: Promise<unknown>[] = [];
      const n = RATE * RATE_SECONDS;
      for (let i = 0; i < n; i++) {
        const wait = t0 + (i * 1000) / RATE - performance.now();
        if (wait > 0) await new Promise((r) => setTimeout(r, wait));
        inflight.push(client.request('POST', '/v1/jobs', { command: ['sh', '-c', 'echo hi; sleep 0.5'], labels: [i % 3 === 0 ? 'kiln-arm64' : 'kiln'] }));
      }
      await Promise.all(inflight);
      // the last jobs' runs (0.5 s) and reports belong to this phase too
      await new Promise((r) => setTimeout(r, 1500));
      const s = (performance.now() - t0) / 1000;
      return { perS: ((cpuMs(proc.pid!) - c0) / n) * RATE, rate: n / s, seconds: s }; // ms of CPU per second at RATE
    };
    // The API requests the open dashboards make (not /v1/live), per page and path, while a phase is measured.
    const requests: Record<string, Map<string, number>> = { jobs: new Map(), fleet: new Map() };
    let counting: string | undefined;
    const countedSeconds: Record<string, number> = {};
    const openViewers = async (page: string, ready: string): Promise<Page[]> => {
      const out: Page[] = [];
      for (let v = 0; v < VIEWERS; v++) {
        const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
        await ctx.addInitScript((t) => sessionStorage.setItem('kiln.token', t), viewer);
        const p = await ctx.newPage();
        p.on('request', (r) => {
          const u = new URL(r.url());
          if (counting !== page || !u.pathname.startsWith('/v1/') || u.pathname === '/v1/live') return;
          const key = `${r.method()} ${u.pathname}${u.searchParams.has('limit') ? `?limit=${u.searchParams.get('limit')}` : ''}`;
          requests[page]!.set(key, (requests[page]!.get(key) ?? 0) + 1);
        });
        // under load the server answers slowly; a viewer that cannot open in 2 minutes fails the bench
        await p.goto(`${url}/#/${page}`, { timeout: 120_000 });
        await p.locator(ready).first().waitFor({ timeout: 120_000 });
        await p.locator('[data-live="on"]').waitFor({ timeout: 120_000 });
        out.push(p);
      }
      return out;
    };
    const base: number[] = [];
    const per: Record<string, number[]> = { jobs: [], fleet: [] };
    const rates: number[] = [];
    for (let round = 0; round < CPU_ROUNDS; round++) {
      const { perS: b, rate } = await steady();
      base.push(b);
      rates.push(rate);
      for (const [page, ready] of [
        ['jobs', '[data-job-state]'],
        ['fleet', '[data-host="sim-0"]'],
      ] as const) {
        const views = await openViewers(page, ready);
        counting = page;
        const { perS: withViewers, rate, seconds } = await steady();
        counting = undefined;
        countedSeconds[page] = (countedSeconds[page] ?? 0) + seconds;
        rates.push(rate);
        per[page]!.push((withViewers - b) / VIEWERS);
        for (const v of views) await v.context().close();
      }
    }
    // Bottom-up: what each viewer's requests cost the server, request by request, with nothing else running
    // (the whole-server difference above also moves with the simulated agents' batching, which the browser
    // sharing their CPU changes). The live feed itself is one socket write per tick per viewer, not counted.
    const viewerClient = makeApiClient({ server: url, token: viewer });
    for (const [page, m] of Object.entries(requests)) {
      let msPerS = 0;
      const parts: string[] = [];
      for (const [key, count] of m) {
        const [method, path] = key.split(' ') as [string, string];
        const reps = 40;
        await viewerClient.request(method, path); // warm
        const c0 = cpuMs(proc.pid!);
        for (let i = 0; i < reps; i++) await viewerClient.request(method, path);
        const perReq = (cpuMs(proc.pid!) - c0) / reps;
        const perViewerPerS = count / VIEWERS / (countedSeconds[page] ?? 1);
        msPerS += perReq * perViewerPerS;
        parts.push(`${key}: ${perViewerPerS.toFixed(2)}/s × ${perReq.toFixed(1)} ms`);
      }
      note(`server CPU per dashboard on the ${page} page, bottom-up`, `${(msPerS / 10).toFixed(2)}% of a core (${parts.join('; ') || 'no requests'})`);
    }
    note('jobs/s achieved per phase', rates.map((r) => r.toFixed(0)).join(', '));
    note(`server CPU at ${RATE} jobs/s, no dashboard`, `${(median(base) / 10).toFixed(1)}% of a core (${base.map((b) => (b / 10).toFixed(1)).join(', ')})`);
    for (const [page, xs] of Object.entries(per)) {
      note(`server CPU per dashboard on the ${page} page`, `${(median(xs) / 10).toFixed(2)}% of a core (${xs.map((x) => (x / 10).toFixed(2)).join(', ')}; ${VIEWERS} dashboards)`);
    }
  } finally {
    await browser.close();
    await Promise.all(agents.map((a) => a.stop()));
    proc.kill('SIGTERM');
    if (proc.exitCode === null) await new Promise((r) => proc.once('exit', r));
    await dropAtEnd?.();
  }
  console.log(`${RATE} jobs/s for ${RATE_SECONDS} s per phase; store ${dbUrl ? 'postgres' : 'pglite'}${PIN ? '; server pinned to CPU 0' : ''}; machine: ${cpus().length} × ${cpus()[0]?.model ?? '?'}, ${(totalmem() / GiB).toFixed(0)} GiB, node ${process.version}`);
  process.exit(0);
}

await main();
