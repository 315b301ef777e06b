/**
 * Host-to-host cache transfer (docs/caches.md, "Fetching a cache from a peer"): how fast a committed version
 * moves from one host to another through the server's relay, against a local sparse copy of the same image
 * (`cp --sparse=always` + sync) measured in the same run. One process: a server on PGlite and two agents on the
 * memory driver with real cache stores (`cache-fill` writes BENCH_MIB MiB of data into a 256M cache). Each run
 * drops the receiving host's copy, then runs a job there: the fetch's own time (from its cache outcome), its
 * bytes, and the process's CPU during it (server and both agents together).
 *
 *   BENCH_RUNS=5 BENCH_MIB=64 BENCH_WINDOW=8 npm run bench:cache-transfer
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { makeAgent, type Agent } from '../src/agent/agent.ts';
import { memoryImageResolver } from '../src/agent/images.ts';
import type { Job } from '../src/core/job.ts';
import { makeServer } from '../src/server/server.ts';
import { openStore } from '../src/store/store.ts';
import { createToken, makeSecret } from '../src/store/tokens.ts';
import { cacheId, makeCacheStore } from '../src/vm/cache-store.ts';
import { makeMemoryDriver } from '../src/vm/memory-driver.ts';
import { makeApiClient } from '../test/support/test-client.ts';

const RUNS = Number(process.env.BENCH_RUNS ?? 5);
const MIB = Number(process.env.BENCH_MIB ?? 64);
const WINDOW = Number(process.env.BENCH_WINDOW ?? 8);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

const dir = mkdtempSync(join(tmpdir(), 'kiln-bench-xfer-'));
const store = await openStore({});
const admin = makeSecret('admin');
const logger = pino({ level: 'silent' });
const server = await makeServer({ store, logger, adminToken: admin, options: { pollMs: 100, heartbeatMs: 1000, cacheRelay: { windowChunks: WINDOW } }, leaderIntervalMs: 200 });
const url = await server.listen({ host: '127.0.0.1', port: 0 });
const { secret: token } = await createToken(store.db, { name: 'agents', role: 'agent' });
const client = makeApiClient({ server: url, token: admin });
const agents: Agent[] = [];
const addAgent = async (name: string, label: string, data: string) => {
  const a = makeAgent({ servers: [url], token, name, labels: [label], driver: makeMemoryDriver({ cacheWrites: true }), images: memoryImageResolver, logger, caches: makeCacheStore(data) });
  agents.push(a);
  const c = a.connected();
  await a.start();
  await c;
};
const run = async (command: string, site: string, cache: Record<string, unknown>): Promise<Job> => {
  const { id } = await client.request<Job>('POST', '/v1/jobs', { command: ['sh', '-c', command], labels: [site], cache });
  for (;;) {
    const j = await client.request<Job>('GET', `/v1/jobs/${id}`);
    if (['succeeded', 'failed', 'lost', 'cancelled', 'timed_out'].includes(j.state)) return j;
    await new Promise((r) => setTimeout(r, 20));
  }
};

const dirA = join(dir, 'a');
const dirB = join(dir, 'b');
const key = 'default/bench';
try {
  await addAgent('host-a', 'site-a', dirA);
  await addAgent('host-b', 'site-b', dirB);
  const w = await run(`cache-fill ${MIB}`, 'site-a', { key: 'bench', write: true, size: '256M' });
  const v = w.cacheOutcome?.committed;
  if (w.state !== 'succeeded' || !v) throw new Error(`the writing job ${w.state}: ${JSON.stringify(w.cacheOutcome)}`);
  for (;;) {
    if ([...server.registry.links.values()].some((l) => l.name === 'host-a' && l.cacheVersions?.get(key) === v.id)) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  const src = join(dirA, 'caches', cacheId(key), 'versions', `${v.id}.raw`);
  const fetchS: number[] = [];
  const copyS: number[] = [];
  const cpuMsPerMiB: number[] = [];
  let bytes = 0;
  const loads: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    loads.push(loadavg()[0]!);
    // Baseline: a local sparse copy of the same image, synced.
    const dst = join(dir, `copy-${i}.raw`);
    const t0 = performance.now();
    execFileSync('cp', ['--sparse=always', src, dst]);
    execFileSync('sync', ['-f', dst]);
    copyS.push((performance.now() - t0) / 1000);
    rmSync(dst);
    // The transfer: B holds nothing of the cache, its job fetches the version from A.
    makeCacheStore(dirB).remove(key);
    const c0 = process.cpuUsage();
    const r = await run('true', 'site-b', { key: 'bench' });
    const cpu = process.cpuUsage(c0);
    const f = r.cacheOutcome?.fetch;
    if (f?.outcome !== 'fetched') throw new Error(`run ${i}: the fetch ${f?.outcome}: ${f?.reason}`);
    fetchS.push(f.seconds ?? 0);
    bytes = f.bytes ?? 0;
    cpuMsPerMiB.push((cpu.user + cpu.system) / 1000 / (bytes / 1024 ** 2));
  }
  const mib = bytes / 1024 ** 2;
  console.log(`machine: ${cpus().length} × ${cpus()[0]?.model ?? '?'}, load average at each run: ${loads.map((l) => l.toFixed(1)).join(', ')}`);
  console.log(`image: 256 MiB cache, ${mib.toFixed(1)} MiB of non-zero blocks relayed per fetch; relay window ${WINDOW} chunks of 512 KiB; ${RUNS} runs`);
  console.log(`fetch (ask, relay, write, checksum, fsync, rename): median ${median(fetchS).toFixed(3)} s = ${(mib / median(fetchS)).toFixed(1)} MiB/s  [${fetchS.map((x) => x.toFixed(3)).join(', ')}]`);
  console.log(`local cp --sparse + sync of the same image: median ${median(copyS).toFixed(3)} s  [${copyS.map((x) => x.toFixed(3)).join(', ')}]`);
  console.log(`ratio fetch ÷ local copy: ${(median(fetchS) / median(copyS)).toFixed(1)}`);
  console.log(`process CPU (server + both agents) per MiB fetched: median ${median(cpuMsPerMiB).toFixed(1)} ms`);
} finally {
  for (const a of agents) await a.stop();
  await server.close();
  await store.close();
  rmSync(dir, { recursive: true, force: true });
}
