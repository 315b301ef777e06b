/**
 * Benchmark: compose a 4-platform index from per-architecture images in another repository and push it,
 * `kiln manifest create` versus `buildah manifest create/add/push --all`, against the same local
 * docker-registry, alternating which goes first, fresh target repository per run. Prints medians, the ratio
 * (kiln / buildah; the target is ≤ 0.5) and the machine.
 *
 *   npm run bench:manifest            (KILN_BENCH_RUNS=N to change the number of runs, default 7)
 */
import { execFile, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { makeDockerConfigCredentials } from '../src/oci/auth.ts';
import { DEFAULT_COMPOSE_OPTIONS } from '../src/oci/compose.ts';
import { createManifest } from '../src/oci/manifest-create.ts';
import { RegistryClient } from '../src/oci/registry-client.ts';
import { Harness, skopeoRaw } from '../test/oci/harness.ts';

const execFileP = promisify(execFile);
const RUNS = Math.max(5, Number(process.env.KILN_BENCH_RUNS ?? 7));
const KILN = fileURLToPath(new URL('../bin/kiln.js', import.meta.url));
const ROOT = fileURLToPath(new URL('..', import.meta.url));
const PLATFORMS = [
  { arch: 'amd64' },
  { arch: 'arm64', variant: 'v8' },
  { arch: 'arm', variant: 'v7' },
  { arch: 'ppc64le' },
];
const LAYER_BYTES = 4 * 1024 * 1024;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
}

async function timed(fn: () => Promise<void>): Promise<number> {
  const t = process.hrtime.bigint();
  await fn();
  return Number(process.hrtime.bigint() - t) / 1e6;
}

const h = new Harness();
try {
  // The CLI as users run it: the esbuild bundle behind bin/kiln.js.
  const b = spawnSync(process.execPath, ['scripts/build.mjs'], { cwd: ROOT, stdio: 'inherit' });
  if (b.status !== 0) throw new Error('npm run build failed');
  const reg = await h.startRegistry();
  const sources: string[] = [];
  for (const p of PLATFORMS) {
    const name = await h.buildImage({ arch: p.arch, ...(p.variant ? { variant: p.variant } : {}), bytes: LAYER_BYTES });
    const digest = await h.buildahPush(name, `docker://${reg.host}/bench/build-${p.arch}:tmp`, 'oci');
    sources.push(`${reg.host}/bench/build-${p.arch}@${digest}`);
  }
  const home = await h.tempDir('kiln-bench-home-');

  const kilnRun = async (i: number) => {
    const { stdout } = await execFileP(process.execPath, [KILN, '--quiet', 'manifest', 'create', `${reg.host}/bench/kiln-${i}`, '--tag', 'latest', ...sources], { env: { PATH: process.env.PATH ?? '', HOME: home } });
    const digest = stdout.split('\n')[0] ?? '';
    if ((await skopeoRaw(`${reg.host}/bench/kiln-${i}:latest`)).digest !== digest) throw new Error('kiln: pushed index does not read back');
  };
  // The same work in-process: what the composer costs without the CLI's start-up (module loading).
  const libRun = async (i: number) => {
    const client = new RegistryClient({ credentials: makeDockerConfigCredentials({}) });
    try {
      await createManifest(
        { target: `${reg.host}/bench/lib-${i}`, tags: ['latest'], sources: sources.map((ref) => ({ ref })), compose: DEFAULT_COMPOSE_OPTIONS, dryRun: false, allowCrossRegistry: false },
        { client, now: () => new Date() },
      );
    } finally {
      await client.close();
    }
  };
  const buildahRun = async (i: number) => {
    const list = `localhost/bench-list-${i}`;
    await h.buildah(['manifest', 'create', list]);
    try {
      for (const s of sources) await h.buildah(['manifest', 'add', '--tls-verify=false', list, `docker://${s}`]);
      await h.buildah(['manifest', 'push', '--all', '--tls-verify=false', '--format', 'oci', list, `docker://${reg.host}/bench/buildah-${i}:latest`]);
    } finally {
      await h.buildah(['manifest', 'rm', list]).catch(() => undefined);
    }
    const raw = await skopeoRaw(`${reg.host}/bench/buildah-${i}:latest`);
    if ((raw.json.manifests as unknown[]).length !== PLATFORMS.length) throw new Error('buildah: pushed list is incomplete');
  };

  // One warm-up each (page cache, registry), not counted.
  await kilnRun(0);
  await buildahRun(0);
  await libRun(0);
  const kiln: number[] = [];
  const buildah: number[] = [];
  const lib: number[] = [];
  for (let i = 1; i <= RUNS; i++) {
    if (i % 2) {
      kiln.push(await timed(() => kilnRun(i)));
      buildah.push(await timed(() => buildahRun(i)));
    } else {
      buildah.push(await timed(() => buildahRun(i)));
      kiln.push(await timed(() => kilnRun(i)));
    }
    lib.push(await timed(() => libRun(i)));
    process.stderr.write(`run ${i}/${RUNS}: kiln ${kiln.at(-1)?.toFixed(0)} ms, buildah ${buildah.at(-1)?.toFixed(0)} ms, kiln in-process ${lib.at(-1)?.toFixed(0)} ms\n`);
  }
  const cpuModel = (readFileSync('/proc/cpuinfo', 'utf8').match(/^model name\s*:\s*(.+)$/m)?.[1] ?? cpus()[0]?.model ?? 'unknown').trim();
  const buildahVersion = (await execFileP('buildah', ['--version'])).stdout.trim();
  const mk = median(kiln);
  const mb = median(buildah);
  console.log(`manifest create: 4-platform index from sources in another repository (${LAYER_BYTES / 1024 / 1024} MiB layer each), local docker-registry`);
  console.log(`machine: nproc=${cpus().length}, cpu="${cpuModel}", load average ${loadavg().map((x) => x.toFixed(2)).join(' ')}, node ${process.version}, ${buildahVersion}`);
  console.log(`runs: ${RUNS} each, alternating`);
  console.log(`kiln manifest create (CLI)      median ${mk.toFixed(0)} ms  (runs: ${kiln.map((x) => x.toFixed(0)).join(', ')})`);
  console.log(`buildah manifest create/add/push median ${mb.toFixed(0)} ms  (runs: ${buildah.map((x) => x.toFixed(0)).join(', ')})`);
  console.log(`kiln in-process (no CLI start)  median ${median(lib).toFixed(0)} ms  (runs: ${lib.map((x) => x.toFixed(0)).join(', ')})`);
  console.log(`ratio kiln/buildah: ${(mk / mb).toFixed(2)} (target ≤ 0.50)`);
  console.log(`ratio kiln in-process/buildah: ${(median(lib) / mb).toFixed(2)}`);
} finally {
  await h.cleanup();
}
