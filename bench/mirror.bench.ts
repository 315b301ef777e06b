/**
 * npm run bench:mirror — a pull through the per-host registry mirror, in a ci VM against the host.
 * A docker-registry on loopback plays Docker Hub and holds a 5-layer image (BENCH_LAYER_MIB each, default
 * 10 MiB of random data: nothing compresses); kiln's supervised mirror (RegistryMirror, the agent's) proxies it.
 * Each run, in alternating order:
 *   guest: the mirror's cache is emptied; one `kiln run --image ci --registry-mirror 127.0.0.1:PORT` VM
 *          (network closed, the mirror forwarded to 10.0.2.100:5000) times, inside the guest,
 *          `docker pull` cold (the mirror fetches from the upstream), then after `docker rmi` the same pull
 *          warm (served from the mirror's cache), then every blob fetched with curl at once to /dev/null
 *          (the transfer alone, without Docker's decompression and unpacking);
 *   host:  the mirror's cache is emptied; `skopeo copy docker://MIRROR/… oci:DIR` cold, then warm.
 * Medians over BENCH_RUNS (default 3) runs; the figure is warm guest pull / warm host pull (target ≤ 2).
 */
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { cpus, loadavg, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { RegistryMirror } from '../src/agent/mirror.ts';
import { chooseAccel, realHostProbe } from '../src/vm/accel.ts';
import { MIRROR_GUEST_ADDRESS } from '../src/vm/forwards.ts';
import { Harness, freePort, skopeoRaw } from '../test/oci/harness.ts';
import { KILN_BIN, KILN_NODE_ARGS, SHARED_DIR } from '../test/support/kiln.ts';
import { ensureCiImage } from '../test/vm/ci-image-support.ts';

const RUNS = Number(process.env.BENCH_RUNS ?? 3);
const LAYERS = 5;
const LAYER_MIB = Number(process.env.BENCH_LAYER_MIB ?? 10);
const MiB = 1024 * 1024;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

function timed(cmd: string, args: string[]): Promise<{ ms: number; code: number | null; stdout: string; stderr: string }> {
  return new Promise((done) => {
    const t = performance.now();
    const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    p.on('close', (code) => done({ ms: performance.now() - t, code, stdout, stderr }));
  });
}

const image = ensureCiImage('amd64');
const oci = new Harness();
const data = mkdtempSync(join(tmpdir(), 'kiln-bench-mirror-'));
mkdirSync(join(SHARED_DIR, 'cache'), { recursive: true });
symlinkSync(join(SHARED_DIR, 'images'), join(data, 'images'));
symlinkSync(join(SHARED_DIR, 'cache'), join(data, 'cache'));
const loads: number[] = [];
const sampleLoad = () => loads.push(loadavg()[0]!);

const hub = await oci.startRegistry();
process.stderr.write(`building a ${LAYERS}-layer image of ${LAYERS * LAYER_MIB} MiB random data\n`);
const local = await oci.buildLayeredImage({ arch: 'amd64', layers: LAYERS, bytesPerLayer: LAYER_MIB * MiB });
await oci.buildahPush(local, `docker://${hub.host}/library/bench:1`, 'v2s2');
const manifest = await skopeoRaw(`${hub.host}/library/bench:1`);
const blobs = (manifest.json as { layers: { digest: string; size: number }[] }).layers;
const totalBytes = blobs.reduce((n, l) => n + l.size, 0);

const listen = `127.0.0.1:${await freePort()}`;
const mirrorDir = await oci.tempDir('kiln-bench-mirror-data-');
const mirror = new RegistryMirror({ dataDir: mirrorDir, listen, guestAddress: MIRROR_GUEST_ADDRESS, upstream: { url: hub.url } });

/** Empties the mirror's cache: stop, remove its storage, start. */
async function coldMirror(): Promise<void> {
  await mirror.stop();
  rmSync(mirror.storageDir, { recursive: true, force: true });
  await mirror.start();
  await mirror.waitHealthy(30_000);
}

const guestScript = [
  'set -e',
  'ms() { echo $(($(date +%s%N) / 1000000)); }',
  't0=$(ms); docker pull -q bench:1 >/dev/null; t1=$(ms); echo "cold_ms=$((t1 - t0))"',
  'docker rmi -f bench:1 >/dev/null; docker image prune -af >/dev/null',
  't0=$(ms); docker pull -q bench:1 >/dev/null; t1=$(ms); echo "warm_ms=$((t1 - t0))"',
  `t0=$(ms); for d in ${blobs.map((b) => b.digest).join(' ')}; do curl -sf -o /dev/null http://${MIRROR_GUEST_ADDRESS}/v2/library/bench/blobs/$d & done; wait; t1=$(ms); echo "curl_ms=$((t1 - t0))"`,
].join('\n');

async function guestRun(): Promise<{ cold: number; warm: number; curl: number }> {
  await coldMirror();
  sampleLoad();
  const r = await timed(process.execPath, [
    ...KILN_NODE_ARGS, KILN_BIN, 'run', '--image', image.digest, '--cpus', '2', '--memory', '1G', '--disk', '4G', '--timeout', '15m',
    '--registry-mirror', listen, '--data-dir', data, '--', 'sh', '-c', guestScript,
  ]);
  sampleLoad();
  const f = (k: string) => Number(new RegExp(`^${k}=(\\d+)$`, 'm').exec(r.stdout)?.[1]);
  if (r.code !== 0 || !Number.isFinite(f('warm_ms'))) throw new Error(`the guest pull failed (exit ${r.code}):\n${r.stdout}\n${r.stderr.slice(-3000)}`);
  return { cold: f('cold_ms'), warm: f('warm_ms'), curl: f('curl_ms') };
}

async function hostPull(): Promise<number> {
  const dir = await oci.tempDir('kiln-bench-pull-');
  const r = await timed('skopeo', ['copy', '-q', '--src-tls-verify=false', `docker://${listen}/library/bench:1`, `oci:${dir}:bench`]);
  if (r.code !== 0) throw new Error(`skopeo copy failed: ${r.stderr}`);
  rmSync(dir, { recursive: true, force: true });
  return r.ms;
}

async function hostRun(): Promise<{ cold: number; warm: number }> {
  await coldMirror();
  sampleLoad();
  const cold = await hostPull();
  const warm = await hostPull();
  sampleLoad();
  return { cold, warm };
}

const guest: { cold: number; warm: number; curl: number }[] = [];
const host: { cold: number; warm: number }[] = [];
try {
  for (let i = 0; i < RUNS; i++) {
    const order = i % 2 === 0 ? (['guest', 'host'] as const) : (['host', 'guest'] as const);
    for (const which of order) {
      if (which === 'guest') guest.push(await guestRun());
      else host.push(await hostRun());
    }
    const g = guest.at(-1)!;
    const h = host.at(-1)!;
    process.stderr.write(`run ${i + 1}/${RUNS} (${order.join(' first, ')}): guest cold ${g.cold} warm ${g.warm} curl ${g.curl} ms; host cold ${h.cold.toFixed(0)} warm ${h.warm.toFixed(0)} ms; load ${loadavg()[0]!.toFixed(1)}\n`);
  }
} finally {
  await mirror.stop();
  await oci.cleanup();
  rmSync(data, { recursive: true, force: true });
}

const accel = chooseAccel('amd64', 'amd64', realHostProbe, 'auto');
const med = (xs: number[]) => median(xs).toFixed(0);
const mbps = (ms: number) => ((totalBytes / MiB) / (ms / 1000)).toFixed(1);
console.log(`machine: ${cpus().length} x ${cpus()[0]?.model ?? '?'}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB, accelerator ${accel.accel} (${accel.reason}); load average (1 min) during the runs ${Math.min(...loads).toFixed(1)}-${Math.max(...loads).toFixed(1)}`);
console.log(`image: ${LAYERS} layers, ${(totalBytes / MiB).toFixed(1)} MiB compressed (random data), from a docker-registry on loopback through kiln's mirror; ci guest ${image.digest.slice(7, 19)}, 2 vCPUs, 1 GiB`);
console.log(`runs: ${RUNS}, guest and host alternating; medians`);
console.log(`guest docker pull, cold mirror:  ${med(guest.map((g) => g.cold))} ms`);
console.log(`guest docker pull, warm mirror:  ${med(guest.map((g) => g.warm))} ms  (${mbps(median(guest.map((g) => g.warm)))} MiB/s)`);
console.log(`guest curl of every layer at once, warm: ${med(guest.map((g) => g.curl))} ms  (${mbps(median(guest.map((g) => g.curl)))} MiB/s: the forward alone)`);
console.log(`host skopeo copy, cold mirror:   ${med(host.map((h) => h.cold))} ms`);
console.log(`host skopeo copy, warm mirror:   ${med(host.map((h) => h.warm))} ms  (${mbps(median(host.map((h) => h.warm)))} MiB/s)`);
console.log(`ratio warm guest / warm host: ${(median(guest.map((g) => g.warm)) / median(host.map((h) => h.warm))).toFixed(2)} (target ≤ 2)`);
console.log(`ratio warm guest curl / warm host: ${(median(guest.map((g) => g.curl)) / median(host.map((h) => h.warm))).toFixed(2)}`);
console.log(`raw: ${JSON.stringify({ guest, host: host.map((h) => ({ cold: Math.round(h.cold), warm: Math.round(h.warm) })) })}`);
