/**
 * npm run bench:snapshot — warm starts against cold boots (docs/ARCHITECTURE.md, "Warm starts"), for the
 * minimal image (job `uname -r`) and the ci image (job `docker info -f {{.ID}}`; BENCH_IMAGES=minimal to skip
 * it). Per image, alternating, BENCH_RUNS (default 7) of each:
 *   (a) cold: `kiln run --cold -v -- JOB`, process start to exit
 *   (b) warm: `kiln run -v -- JOB` restored from the snapshot kiln built (first run, not counted)
 *   (c) bare QEMU restore of the same snapshot: fresh overlays on the saved ones, QEMU with the same command
 *       line and -incoming defer, QMP migrate-incoming, `paused`, cont, the job's lines sent directly on
 *       kiln.ctl (no per-VM identity, so for the ci image no dockerd restart either), to EXIT; what kiln's own
 *       code adds is (b) - (c)
 * Also kiln's prepare (from -v) for (a) and (b), and memory: PSS of three warm VMs at once against one cold VM.
 * Then the fleet pickup figure: `kiln jobs submit` to the command's first output, against two `kiln up`
 * (one with warm starts, one with KILN_WARM_STARTS=off), alternating, minimal image (BENCH_FLEET=0 to skip).
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, mkdirSync } from 'node:fs';
import { createServer, type Socket } from 'node:net';
import { cpus, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { makeImageStore, type ImageManifest } from '../src/image/store.ts';
import { chooseAccel, realHostProbe } from '../src/vm/accel.ts';
import { createOverlay } from '../src/vm/disks.ts';
import { makeLineSplitter } from '../src/vm/channel.ts';
import { buildQemuArgs, hostTscKhz } from '../src/vm/qemu-args.ts';
import { makeQmp } from '../src/vm/qmp.ts';
import { makeSnapshotStore } from '../src/vm/snapshot-store.ts';
import { restoreSnapshot } from '../src/vm/snapshot-template.ts';
import { ensureImage } from '../test/support/kiln.ts';
import { ensureCiImage } from '../test/vm/ci-image-support.ts';

const RUNS = Math.max(7, Number(process.env.BENCH_RUNS ?? 7));
const repo = resolve(import.meta.dirname, '..');
const shared = process.env.KILN_TEST_SHARED_DIR ?? '/tmp/kiln-test-shared';
const kiln = join(repo, 'bin', 'kiln.js');
/** ci: a job that asks Docker (`docker info`); ci-plain: the ci image with a job that does not use Docker. */
const IMAGES = (process.env.BENCH_IMAGES ?? 'minimal,ci,ci-plain').split(',').filter(Boolean) as ('minimal' | 'ci' | 'ci-plain')[];

interface Case {
  profile: 'minimal' | 'ci' | 'ci-plain';
  image: ImageManifest;
  job: string[];
  shape: string[];
  memoryMiB: number;
  cpus: number;
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length === 0 ? NaN : s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};
const range = (xs: number[]) => `[${Math.min(...xs).toFixed(0)}-${Math.max(...xs).toFixed(0)}]`;
const loadavg = () => readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
const loads: string[] = [];
/** A long boot limit: on the shared 2-core machine a cold TCG boot has taken over the default 90 s at load 23. */
const benchEnv = { ...process.env, KILN_BOOT_TIMEOUT: process.env.KILN_BOOT_TIMEOUT ?? '10m' };

mkdirSync(join(shared, 'cache'), { recursive: true });
const store = makeImageStore(shared);
const accel = chooseAccel('amd64', 'amd64', realHostProbe, 'auto');
const tscKhz = accel.accel === 'tcg' ? hostTscKhz(readFileSync('/proc/cpuinfo', 'utf8')) : undefined;

function newDataDir(): string {
  const data = mkdtempSync(join(tmpdir(), 'kiln-bench-'));
  symlinkSync(join(shared, 'images'), join(data, 'images'));
  symlinkSync(join(shared, 'cache'), join(data, 'cache'));
  return data;
}

function kilnRun(data: string, c: Case, args: string[]): Promise<{ ms: number; code: number | null; stderr: string }> {
  return new Promise((done) => {
    const t = performance.now();
    const p = spawn(process.execPath, [kiln, 'run', ...args, '--image', c.image.digest, ...c.shape, '--data-dir', data, '--', ...c.job], { stdio: ['ignore', 'ignore', 'pipe'], env: benchEnv });
    let stderr = '';
    p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    p.on('close', (code) => done({ ms: performance.now() - t, code, stderr }));
  });
}

/** (c): QEMU and QMP only, no kiln CLI or driver. */
async function bareRestore(c: Case, snapDir: string, work: string): Promise<number> {
  const t = performance.now();
  const root = c.image.rootDisk ? join(work, 'root.qcow2') : undefined;
  await Promise.all([
    createOverlay(join(work, 'scratch.qcow2'), join(snapDir, 'scratch.qcow2'), 'qcow2'),
    root ? createOverlay(root, join(snapDir, 'root.qcow2'), 'qcow2') : undefined,
  ]);
  const sockets = { qmp: join(work, 'q'), ctl: join(work, 'c'), stdout: join(work, 'o'), stderr: join(work, 'e') };
  const conns: Record<string, Promise<Socket>> = {};
  const servers = Object.entries(sockets).map(([k, p]) => {
    const s = createServer();
    conns[k] = new Promise((r) => s.once('connection', r));
    s.listen(p);
    return s;
  });
  await Promise.all(servers.map((s) => new Promise((r) => (s.listening ? r(undefined) : s.once('listening', r)))));
  const args = buildQemuArgs({
    id: 'bench-bare',
    arch: 'amd64',
    accel: accel.accel === 'kvm' ? 'kvm' : 'tcg',
    cpus: c.cpus,
    memoryMiB: c.memoryMiB,
    kernel: store.pathOf(c.image, c.image.kernel),
    initrd: store.pathOf(c.image, c.image.initrd),
    ...(c.image.cmdline ? { cmdline: c.image.cmdline } : {}),
    ...(tscKhz ? { tscKhz } : {}),
    sockets,
    consoleLog: join(work, 'console'),
    pidFile: join(work, 'pid'),
    scratchDisk: join(work, 'scratch.qcow2'),
    ...(root ? { rootDisk: root } : {}),
    ramFile: { path: join(snapDir, 'ram'), shared: false },
    incomingDefer: true,
    network: { restrict: true, forwards: [] },
  });
  const q = spawn('qemu-system-x86_64', args, { stdio: 'ignore' });
  const exited = new Promise((r) => q.on('exit', r));
  const qmp = await makeQmp(await conns.qmp!);
  await restoreSnapshot(qmp, join(snapDir, 'state'), 60_000);
  const ctl = await conns.ctl!;
  void conns.stdout!.then((s) => s.resume());
  void conns.stderr!.then((s) => s.resume());
  const exit = new Promise<void>((r) => ctl.on('data', makeLineSplitter((l) => l.startsWith('EXIT') && r())));
  ctl.write([...c.job.map((a) => `ARG ${Buffer.from(a).toString('base64')}`), 'RUN', ''].join('\n'));
  await exit;
  const ms = performance.now() - t;
  await exited;
  qmp.close();
  for (const s of servers) s.close();
  for (const x of Object.values(conns)) void x.then((s) => s.destroy());
  rmSync(join(work, 'scratch.qcow2'), { force: true });
  if (root) rmSync(root, { force: true });
  return ms;
}

/** PSS (KiB) of the QEMU processes of this data directory's VMs. */
function qemuPss(data: string): number[] {
  const out: number[] = [];
  for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    try {
      const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
      if (!cmd.includes('qemu-system') || !cmd.includes(data) || !cmd.includes('kiln-vm-run-')) continue;
      const pss = /^Pss:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'))?.[1];
      if (pss) out.push(Number(pss));
    } catch {
      /* gone */
    }
  }
  return out;
}

async function pssOf(data: string, c: Case, n: number, warm: boolean): Promise<number[]> {
  const procs = Array.from({ length: n }, () =>
    spawn(process.execPath, [kiln, 'run', '-q', ...(warm ? [] : ['--cold']), '--image', c.image.digest, ...c.shape, '--data-dir', data, '--', 'sh', '-c', 'head -c 20000000 /dev/zero > /work/z; sleep 8'], { stdio: 'ignore', env: benchEnv }),
  );
  let best: number[] = [];
  const t = Date.now();
  while (Date.now() - t < 180_000 && procs.some((p) => p.exitCode === null)) {
    await new Promise((r) => setTimeout(r, 500));
    const now = qemuPss(data);
    if (now.length === n) best = now;
  }
  await Promise.all(procs.filter((p) => p.exitCode === null).map((p) => new Promise((r) => p.once('exit', r))));
  return best;
}

async function benchImage(c: Case): Promise<string[]> {
  const data = newDataDir();
  const work = mkdtempSync(join(tmpdir(), 'kb-'));
  const a: number[] = [];
  const b: number[] = [];
  const cc: number[] = [];
  const prepA: number[] = [];
  const prepB: number[] = [];
  try {
    const first = await kilnRun(data, c, ['-v']);
    if (first.code !== 0 || !/warm start/.test(first.stderr)) throw new Error(`the first warm run failed or was not warm:\n${first.stderr}`);
    const snap = makeSnapshotStore(data).list()[0]!;
    const snapDir = join(makeSnapshotStore(data).dir, snap.id);
    await kilnRun(data, c, ['-v', '--cold']);
    for (let i = 0; i < RUNS; i++) {
      const ra = await kilnRun(data, c, ['-v', '--cold']);
      const rb = await kilnRun(data, c, ['-v']);
      const rc = await bareRestore(c, snapDir, work);
      if (ra.code !== 0 || rb.code !== 0) throw new Error(`kiln run failed:\n${ra.stderr}\n${rb.stderr}`);
      if (!/warm start/.test(rb.stderr)) throw new Error(`run ${i + 1} was not warm:\n${rb.stderr}`);
      a.push(ra.ms);
      b.push(rb.ms);
      cc.push(rc);
      prepA.push(Number(/prepare\s+(\d+) ms/.exec(ra.stderr)?.[1]));
      prepB.push(Number(/prepare\s+(\d+) ms/.exec(rb.stderr)?.[1]));
      loads.push(loadavg());
      process.stderr.write(`${c.profile} run ${i + 1}/${RUNS}: cold ${ra.ms.toFixed(0)} ms, warm ${rb.ms.toFixed(0)} ms, bare restore ${rc.toFixed(0)} ms (load ${loadavg()})\n`);
    }
    const pssWarm = await pssOf(data, c, 3, true);
    const pssCold = await pssOf(data, c, 1, false);
    const [ma, mb, mc] = [median(a), median(b), median(cc)];
    const avg = (xs: number[]) => xs.reduce((s, x) => s + x, 0) / Math.max(1, xs.length);
    return [
      `image ${c.image.digest.slice(7, 19)} (${c.profile}), job \`${c.job.join(' ')}\`, ${c.shape.join(' ')}, ${RUNS} runs each, alternating; medians [min-max]`,
      `(a) cold kiln run:          ${ma.toFixed(0)} ms ${range(a)}`,
      `(b) warm kiln run:          ${mb.toFixed(0)} ms ${range(b)}`,
      `(c) bare QEMU restore:      ${mc.toFixed(0)} ms ${range(cc)}`,
      `(b)/(a) = ${(mb / ma).toFixed(3)} (target <= 0.15); (b)/(c) = ${(mb / mc).toFixed(3)} (target <= 1.10)`,
      `prepare: cold ${median(prepA).toFixed(0)} ms ${range(prepA)}, warm ${median(prepB).toFixed(0)} ms ${range(prepB)} (target <= 50 ms)`,
      `PSS: warm ${pssWarm.map((k) => (k / 1024).toFixed(0)).join(', ')} MiB (3 at once), cold ${pssCold.map((k) => (k / 1024).toFixed(0)).join(', ')} MiB (one); ratio ${(avg(pssWarm) / avg(pssCold)).toFixed(2)} (target <= 0.5)`,
    ];
  } finally {
    rmSync(work, { recursive: true, force: true });
    rmSync(data, { recursive: true, force: true });
  }
}

/** A `kiln up` with the QEMU driver on its own data directory and port; resolves once it is up. */
async function startUp(warm: boolean): Promise<{ url: string; data: string; stop(): Promise<void> }> {
  const data = newDataDir();
  const port = await new Promise<number>((r) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const p = (s.address() as { port: number }).port;
      s.close(() => r(p));
    });
  });
  const p = spawn(process.execPath, [kiln, 'up', '--driver', 'qemu', '--listen', `127.0.0.1:${port}`, '--data-dir', data], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...benchEnv, KILN_WARM_STARTS: warm ? 'on' : 'off', KILN_LOG_LEVEL: 'warn' },
  });
  let out = '';
  await new Promise<void>((resolveUp, reject) => {
    const t = setTimeout(() => reject(new Error(`kiln up did not start:\n${out}`)), 120_000);
    const see = (d: Buffer) => {
      out += d.toString();
      if (/kiln is up at/.test(out)) {
        clearTimeout(t);
        resolveUp();
      }
    };
    p.stdout.on('data', see);
    p.stderr.on('data', see);
  });
  return {
    url: `http://127.0.0.1:${port}`,
    data,
    async stop() {
      p.kill('SIGTERM');
      await new Promise((r) => p.once('exit', r));
      rmSync(data, { recursive: true, force: true });
    },
  };
}

/** `kiln jobs submit` started to the command's first output byte. */
function pickup(up: { url: string; data: string }): Promise<{ ms: number }> {
  return new Promise((done, fail) => {
    const t = performance.now();
    const env = { ...process.env, KILN_SERVER: up.url, KILN_DATA_DIR: up.data, KILN_TOKEN: '' };
    const p = spawn(process.execPath, [kiln, 'jobs', 'submit', '--image', fleetImage, '--cpus', '1', '--memory', '512M', '--disk', '1G', '--', 'echo', 'running'], { stdio: ['ignore', 'pipe', 'pipe'], env });
    let first = 0;
    let err = '';
    p.stdout.once('data', () => (first = performance.now() - t));
    p.stderr.on('data', (d: Buffer) => (err += d.toString()));
    p.on('close', (code) => {
      if (code !== 0 || !first) return fail(new Error(`jobs submit failed (${code}):\n${err}`));
      done({ ms: first });
    });
  });
}

async function benchFleet(): Promise<string[]> {
  const warmUp = await startUp(true);
  const coldUp = await startUp(false);
  try {
    // The warm host's first job boots cold and its agent builds the snapshot; wait until it reports it ready.
    await pickup(warmUp);
    for (let i = 0; i < 600; i++) {
      const r = await fetch(`${warmUp.url}/v1/hosts`, { headers: { authorization: `Bearer ${readFileSync(join(warmUp.data, 'admin.token'), 'utf8').trim()}` } });
      const hosts = ((await r.json()) as { hosts: { snapshots: { state: string }[] | null }[] }).hosts;
      if (hosts[0]?.snapshots?.[0]?.state === 'ready') break;
      await new Promise((r2) => setTimeout(r2, 500));
    }
    await pickup(coldUp);
    const w: number[] = [];
    const c: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      c.push((await pickup(coldUp)).ms);
      w.push((await pickup(warmUp)).ms);
      loads.push(loadavg());
      process.stderr.write(`fleet run ${i + 1}/${RUNS}: cold ${c.at(-1)!.toFixed(0)} ms, warm ${w.at(-1)!.toFixed(0)} ms (load ${loadavg()})\n`);
    }
    return [
      `fleet pickup (kiln jobs submit to the command's first output; kiln up, minimal image, 1 cpu 512M), ${RUNS} runs each, alternating; medians [min-max]`,
      `cold (KILN_WARM_STARTS=off): ${median(c).toFixed(0)} ms ${range(c)}`,
      `warm:                        ${median(w).toFixed(0)} ms ${range(w)}`,
      `warm/cold = ${(median(w) / median(c)).toFixed(3)}`,
    ];
  } finally {
    await warmUp.stop();
    await coldUp.stop();
  }
}

const report: string[] = [];
let fleetImage = ensureImage('amd64').digest;
for (const profile of IMAGES) {
  // This checkout's images (built once, as the tests do): the shared store may hold other checkouts' too.
  const image = profile === 'minimal' ? ensureImage('amd64') : ensureCiImage('amd64');
  if (profile === 'minimal') fleetImage = image.digest;
  const ciShape = { shape: ['--cpus', '2', '--memory', '1G', '--disk', '2G', '--timeout', '10m'], memoryMiB: 1024, cpus: 2 };
  const c: Case =
    profile === 'ci'
      ? { profile, image, job: ['docker', 'info', '-f', '{{.ID}}'], ...ciShape }
      : profile === 'ci-plain'
        ? { profile, image, job: ['uname', '-r'], ...ciShape }
        : { profile, image, job: ['uname', '-r'], shape: ['--cpus', '1', '--memory', '512M', '--disk', '1G'], memoryMiB: 512, cpus: 1 };
  report.push(...(await benchImage(c)), '');
}
if (process.env.BENCH_FLEET !== '0') report.push(...(await benchFleet()));
console.log(`machine: ${cpus().length} x ${cpus()[0]?.model ?? '?'}, accelerator ${accel.accel}; load average per run ${loads.join(' | ')}; at the end ${loadavg()}`);
for (const l of report) console.log(l);
