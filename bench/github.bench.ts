// npm run bench:github — the GitHub path under a shuffled burst, runners played through their lifecycle.
//
// A kiln server (in this process, embedded store, or PostgreSQL when KILN_TEST_DATABASE_URL or
// KILN_BENCH_DATABASE_URL is set) with GitHub configured against the GitHub double (test/github/support),
// and one agent whose memory-driver VMs run the stand-in runner: each runner connects to the double, takes a
// queued job, runs it and exits, while the double sends its own in_progress and completed deliveries.
// The burst: BENCH_GITHUB_DELIVERIES (2,000) queued deliveries, 10% of them duplicates (half the same delivery
// id, half the same action through another hook), shuffled, posted 16 at a time. Prints:
//   - GitHub API calls per job (target ≤ 4) with the breakdown by endpoint, counted once every runner is
//     retired, and kiln's job reads by reason (kiln_github_job_reads_total);
//   - registrations per job (target 1.00);
//   - p50/p99 from the queued delivery received to generate-jitconfig sent, and the ratio of the p50 to the
//     p50 of one webhook round trip measured in the same run (the baseline).
import { randomUUID } from 'node:crypto';
import { cpus, totalmem } from 'node:os';
import { startGitHubHarness, until } from '../test/github/support/harness.ts';
import type { DoubleDelivery } from '../test/github/support/github-double.ts';
import { seededRandom } from '../src/core/seeded-random.ts';

const DELIVERIES = Number(process.env.BENCH_GITHUB_DELIVERIES ?? 2000);
const pgUrl = process.env.KILN_BENCH_DATABASE_URL ?? process.env.KILN_TEST_DATABASE_URL;
if (pgUrl && !process.env.KILN_TEST_DATABASE_URL) process.env.KILN_TEST_DATABASE_URL = pgUrl;

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] ?? NaN;
};

function shuffle<T>(xs: T[], seed: number): T[] {
  const r = seededRandom(seed);
  for (let i = xs.length - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [xs[i], xs[j]] = [xs[j]!, xs[i]!];
  }
  return xs;
}

const endpoint = (method: string, path: string) =>
  `${method} ${path
    .replace(/^\/repos\/[^/]+\/[^/]+/, '/repos/{o}/{r}')
    .replace(/^\/orgs\/[^/]+/, '/orgs/{org}')
    .replace(/\/\d+/g, '/{id}')}`;

async function main(): Promise<void> {
  const jobsN = Math.round(DELIVERIES * 0.9);
  const h = await startGitHubHarness({
    kind: pgUrl ? 'postgres' : 'pglite',
    jobMs: 20,
    config: { maxRunners: 10_000, bootTimeoutMs: 600_000, reconcileMs: 2_000, redeliverMs: 60_000, idleGraceMs: 5_000 },
  });
  try {
    await h.server.github!.pause();
    const deliveries: DoubleDelivery[] = [];
    for (let i = 0; i < jobsN; i++) {
      const j = await h.double.queueJob(i % 2 === 0 ? 'acme/secret' : 'acme/app', [i % 3 === 0 ? 'kiln-2cpu-4gb' : 'kiln'], { send: false });
      deliveries.push(await h.double.sendWebhook(j, 'queued', { drop: true }));
    }
    const dups = deliveries.slice(0, DELIVERIES - jobsN).map((d, i) => (i % 2 === 0 ? { ...d } : { ...d, guid: randomUUID() }));
    const all = shuffle([...deliveries, ...dups], 7);
    const rtt: number[] = [];
    let next = 0;
    const t0 = Date.now();
    h.server.github!.resume();
    await Promise.all(
      Array.from({ length: 16 }, async () => {
        while (next < all.length) {
          const d = all[next++]!;
          const s = Date.now();
          const status = await h.double.post(d);
          rtt.push(Date.now() - s);
          if (status !== 202 && status !== 200) throw new Error(`delivery answered ${status}`);
        }
      }),
    );
    await until('every job ran', () => [...h.double.jobs.values()].every((j) => j.status === 'completed'), 3_600_000);
    const wall = Date.now() - t0;
    await until('every delivery processed', async () => (await h.store.db.selectFrom('github_deliveries').select('status').where('status', '=', 'pending').execute()).length === 0, 600_000);
    // Counted once kiln has settled: every runner retired (its DELETE made), not while retirements still run.
    await until('every runner retired', async () => (await h.store.db.selectFrom('github_runners').select('id').where('state', '<>', 'gone').execute()).length === 0, 600_000);
    const settleSeconds = Math.round((Date.now() - t0 - wall) / 100) / 10;
    const reads = (await h.server.ctx.metrics.registry.getSingleMetricAsString('kiln_github_job_reads_total').catch(() => ''))
      .split('\n')
      .filter((l) => l.startsWith('kiln_github_job_reads_total{'));

    const api = h.double.calls.filter((c) => !c.path.startsWith('/_runner/'));
    const byEndpoint = new Map<string, number>();
    for (const c of api) byEndpoint.set(endpoint(c.method, c.path), (byEndpoint.get(endpoint(c.method, c.path)) ?? 0) + 1);

    // Latency: the job's first queued delivery received → its runner's generate-jitconfig.
    const received = new Map<number, number>();
    for (const d of await h.store.db.selectFrom('github_deliveries').select(['payload', 'received_at', 'action']).execute()) {
      if (d.action !== 'queued') continue;
      const id = (d.payload as { workflow_job: { id: number } }).workflow_job.id;
      const at = new Date(d.received_at).getTime();
      if (!received.has(id) || received.get(id)! > at) received.set(id, at);
    }
    const lat: number[] = [];
    for (const line of h.logs().split('\n')) {
      if (!line.includes('"runner VM queued"')) continue;
      const l = JSON.parse(line) as { runner: string; ghJobId: number };
      const sent = h.double.registeredAt.get(l.runner);
      const got = received.get(l.ghJobId);
      if (sent !== undefined && got !== undefined) lat.push(sent - got);
    }
    const out = {
      machine: `${cpus().length} cpu, ${Math.round(totalmem() / 1024 ** 3)} GiB, node ${process.version}`,
      store: pgUrl ? 'postgres' : 'pglite',
      deliveries: all.length,
      jobs: jobsN,
      wallSeconds: Math.round(wall / 100) / 10,
      settleSeconds,
      jobReadsByWhy: reads,
      apiCallsPerJob: Math.round((api.length / jobsN) * 100) / 100,
      apiCalls: Object.fromEntries([...byEndpoint].sort((a, b) => b[1] - a[1])),
      registrationsPerJob: Math.round((h.double.registeredNames.length / jobsN) * 1000) / 1000,
      deliveryToJitconfigMs: { p50: pct(lat, 50), p99: pct(lat, 99), n: lat.length },
      webhookRoundTripMs: { p50: pct(rtt, 50), p99: pct(rtt, 99) },
      ratioP50ToRoundTrip: Math.round((pct(lat, 50) / Math.max(1, pct(rtt, 50))) * 10) / 10,
      doubleViolations: h.double.violations.length,
    };
    process.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
  } finally {
    await h.close();
  }
}

await main();
