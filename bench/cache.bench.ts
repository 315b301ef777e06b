/**
 * npm run bench:cache — warm caches (docs/caches.md), minimal image, `kiln run`, alternating variants,
 * BENCH_RUNS (default 3) of each:
 *   (a) a dependency step cold (a new, empty cache) and warm (the cache a previous run committed): the step
 *       makes DEPS_FILES compressed files under /cache/deps unless they are there (a stand-in for a download:
 *       the guest has no network here); the figure is the job's run time from `kiln run -v`, warm ÷ cold
 *   (b) attach overhead: `kiln run -- true` without a cache against the same with an unused read-only cache,
 *       both restored warm (a VM with a cache restores from a snapshot with a cache slot of its size; the
 *       warm-up builds both snapshots), whole process wall time
 *   (c) commit time per GB: host side only, a 512 MiB write into a lease's overlay (qemu-img), then commit
 * Prints medians and ranges, and the machine's load.
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { makeCacheStore } from '../src/vm/cache-store.ts';

const RUNS = Math.max(1, Number(process.env.BENCH_RUNS ?? 3));
const DEPS_FILES = Number(process.env.DEPS_FILES ?? 150);
const repo = resolve(import.meta.dirname, '..');
const shared = process.env.KILN_TEST_SHARED_DIR ?? '/tmp/kiln-test-shared';
const kiln = join(repo, 'bin', 'kiln.js');
const MiB = 1024 * 1024;

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length === 0 ? NaN : s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};
const range = (xs: number[]) => `[${Math.min(...xs).toFixed(0)}-${Math.max(...xs).toFixed(0)}]`;

const dataDir = mkdtempSync(join(tmpdir(), 'kiln-bench-cache-'));
mkdirSync(join(shared, 'images'), { recursive: true });
mkdirSync(join(shared, 'cache'), { recursive: true });
symlinkSync(join(shared, 'images'), join(dataDir, 'images'));
symlinkSync(join(shared, 'cache'), join(dataDir, 'cache'));

function kilnRun(args: string[]): Promise<{ ms: number; runMs: number; code: number | null; stderr: string }> {
  return new Promise((done) => {
    const t = performance.now();
    const p = spawn(process.execPath, [kiln, 'run', '-v', '--data-dir', dataDir, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    p.on('close', (code) => {
      const runMs = Number(/kiln: {3}run\s+(\d+) ms/.exec(stderr)?.[1] ?? NaN);
      done({ ms: performance.now() - t, runMs, code, stderr });
    });
  });
}

const DEP_STEP = `mkdir -p /cache/deps; if [ "$(ls /cache/deps | wc -l)" -ge ${DEPS_FILES} ]; then echo warm; else i=0; while [ $i -lt ${DEPS_FILES} ]; do head -c 65536 /dev/urandom | gzip -1 > /cache/deps/$i.gz; i=$((i + 1)); done; echo cold; fi; find /cache/deps -type f | xargs cat | wc -c`;

async function main() {
  const ok = (r: { code: number | null; stderr: string }, what: string) => {
    if (r.code !== 0) throw new Error(`${what} failed (${r.code}):\n${r.stderr}`);
  };
  // Warm-up: the image exists, the warm cache has a committed version, and the snapshots (without a cache, and
  // with a 256M cache slot) are built.
  ok(await kilnRun(['--cache', 'bench-warm', '--cache-size', '256M', '--', 'sh', '-c', DEP_STEP]), 'warm-up');
  ok(await kilnRun(['--', 'true']), 'warm-up without a cache');
  const warmStart = (r: { stderr: string }, what: string) => {
    if (!/warm start: restored from a snapshot/.test(r.stderr)) throw new Error(`${what} did not restore warm:\n${r.stderr}`);
  };
  const cold: number[] = [];
  const warm: number[] = [];
  const bare: number[] = [];
  const attached: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    const c = await kilnRun(['--cache', `bench-cold-${i}`, '--cache-size', '256M', '--cache-readonly', '--', 'sh', '-c', DEP_STEP]);
    ok(c, 'cold dependency step');
    cold.push(c.runMs);
    const w = await kilnRun(['--cache', 'bench-warm', '--cache-readonly', '--', 'sh', '-c', DEP_STEP]);
    ok(w, 'warm dependency step');
    if (!/cache bench-warm/.test(w.stderr) && w.runMs > c.runMs) process.stderr.write('note: the warm run was slower than the cold one\n');
    warm.push(w.runMs);
    const b = await kilnRun(['--', 'true']);
    ok(b, 'bare run');
    warmStart(b, 'the run without a cache');
    bare.push(b.ms);
    const a = await kilnRun(['--cache', 'bench-unused', '--cache-size', '256M', '--cache-readonly', '--', 'true']);
    ok(a, 'run with an unused cache');
    warmStart(a, 'the run with an unused cache');
    attached.push(a.ms);
    console.log(`round ${i + 1}: dependency step cold ${c.runMs} ms, warm ${w.runMs} ms; no cache ${b.ms.toFixed(0)} ms, unused cache ${a.ms.toFixed(0)} ms`);
  }

  // (c) commit time per GB, host side.
  const store = makeCacheStore(join(dataDir, 'commit'));
  const secondsPerGiB: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    const lease = await store.open('commit', { sizeBytes: 1024 * MiB, jobId: `c${i}` });
    const src = join(dataDir, `src-${i}.raw`);
    spawnSync('cp', ['--sparse=always', join(lease.overlayPath, '..', 'base.raw'), src]);
    spawnSync('chmod', ['0644', src]);
    const blob = join(dataDir, 'blob');
    writeFileSync(blob, Buffer.alloc(512 * MiB, i + 1));
    spawnSync('debugfs', ['-w', '-R', `write ${blob} blob`, src], { env: { ...process.env, PATH: `${process.env.PATH}:/usr/sbin:/sbin` } });
    rmSync(blob);
    rmSync(lease.overlayPath);
    spawnSync('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', '-B', join(lease.overlayPath, '..', 'base.raw'), '-F', 'raw', src, lease.overlayPath]);
    rmSync(src);
    const v = await lease.commit({ jobId: `c${i}` });
    lease.release();
    secondsPerGiB.push((v.commitSeconds ?? NaN) / (v.bytes / (1024 * MiB)));
  }

  const load = loadavg().map((x) => x.toFixed(1)).join(' ');
  console.log(`machine: ${cpus().length} CPUs (${cpus()[0]?.model ?? '?'}), load average ${load}; ${RUNS} runs of each, alternating`);
  console.log(`(a) dependency step (${DEPS_FILES} files): cold ${median(cold).toFixed(0)} ms ${range(cold)}, warm ${median(warm).toFixed(0)} ms ${range(warm)}: warm ÷ cold = ${(median(warm) / median(cold)).toFixed(2)} (target ≤ 0.3)`);
  console.log(`(b) attach overhead: no cache ${median(bare).toFixed(0)} ms ${range(bare)}, unused cache ${median(attached).toFixed(0)} ms ${range(attached)}: ÷ = ${(median(attached) / median(bare)).toFixed(3)} (target ≤ 1.05)`);
  console.log(`(c) commit: ${median(secondsPerGiB).toFixed(2)} s per GiB written ${range(secondsPerGiB.map((s) => s * 1000))} ms`);
}

try {
  await main();
} finally {
  rmSync(dataDir, { recursive: true, force: true });
}
