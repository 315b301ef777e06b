/**
 * npm run bench:snapshot — warm starts against cold boots, minimal image (docs/ARCHITECTURE.md, "Warm starts").
 * Alternating, BENCH_RUNS (default 7) of each:
 *   (a) cold: `kiln run --cold -v -- uname -r`, process start to exit
 *   (b) warm: `kiln run -v -- uname -r` restored from the snapshot kiln built (first run, not counted)
 *   (c) bare QEMU restore of the same snapshot: a fresh overlay on the saved one (qemu-img), QEMU with the
 *       same command line and -incoming defer, QMP migrate-incoming, `paused`, cont, the job's lines sent
 *       directly on kiln.ctl (no per-VM identity), to EXIT; what kiln's own code adds is (b) - (c)
 * Also kiln's prepare (from -v) for (a) and (b), and memory: PSS of three warm VMs at once against one cold VM.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, mkdirSync } from 'node:fs';
import { createServer, type Socket } from 'node:net';
import { cpus, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { makeImageStore } from '../src/image/store.ts';
import { chooseAccel, realHostProbe } from '../src/vm/accel.ts';
import { createOverlay } from '../src/vm/disks.ts';
import { makeLineSplitter } from '../src/vm/channel.ts';
import { buildQemuArgs, hostTscKhz } from '../src/vm/qemu-args.ts';
import { makeQmp } from '../src/vm/qmp.ts';
import { makeSnapshotStore } from '../src/vm/snapshot-store.ts';
import { restoreSnapshot } from '../src/vm/snapshot-template.ts';

const RUNS = Math.max(7, Number(process.env.BENCH_RUNS ?? 7));
const repo = resolve(import.meta.dirname, '..');
const shared = process.env.KILN_TEST_SHARED_DIR ?? '/tmp/kiln-test-shared';
const kiln = join(repo, 'bin', 'kiln.js');
const JOB = ['uname', '-r'];

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length === 0 ? NaN : s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};
const range = (xs: number[]) => `[${Math.min(...xs).toFixed(0)}-${Math.max(...xs).toFixed(0)}]`;

function kilnRun(args: string[]): Promise<{ ms: number; code: number | null; stderr: string }> {
  return new Promise((done) => {
    const t = performance.now();
    const p = spawn(process.execPath, [kiln, 'run', ...args, '--data-dir', data, '--', ...JOB], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    p.on('close', (code) => done({ ms: performance.now() - t, code, stderr }));
  });
}

mkdirSync(join(shared, 'cache'), { recursive: true });
const store = makeImageStore(shared);
const image = store.newest('minimal', 'amd64');
if (!image) throw new Error(`no minimal image in ${shared}: run \`kiln image build --data-dir ${shared}\` (or any VM test) first`);
const data = mkdtempSync(join(tmpdir(), 'kiln-bench-'));
symlinkSync(join(shared, 'images'), join(data, 'images'));
symlinkSync(join(shared, 'cache'), join(data, 'cache'));
const accel = chooseAccel('amd64', 'amd64', realHostProbe, 'auto');
const tscKhz = accel.accel === 'tcg' ? hostTscKhz(readFileSync('/proc/cpuinfo', 'utf8')) : undefined;

/** (c): QEMU and QMP only, no kiln CLI or driver. */
async function bareRestore(snapDir: string, work: string): Promise<number> {
  const t = performance.now();
  await createOverlay(join(work, 'scratch.qcow2'), join(snapDir, 'scratch.qcow2'), 'qcow2');
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
    cpus: 1,
    memoryMiB: 512,
    kernel: store.pathOf(image!, image!.kernel),
    initrd: store.pathOf(image!, image!.initrd),
    ...(tscKhz ? { tscKhz } : {}),
    sockets,
    consoleLog: join(work, 'console'),
    pidFile: join(work, 'pid'),
    scratchDisk: join(work, 'scratch.qcow2'),
    ramFile: { path: join(snapDir, 'ram'), shared: false },
    incomingDefer: true,
    network: { restrict: true, forwards: [] },
  });
  const q = spawn('qemu-system-x86_64', args, { stdio: 'ignore' });
  const exited = new Promise((r) => q.on('exit', r));
  const qmp = await makeQmp(await conns.qmp!);
  await restoreSnapshot(qmp, join(snapDir, 'state'), 20_000);
  const ctl = await conns.ctl!;
  void conns.stdout!.then((s) => s.resume());
  void conns.stderr!.then((s) => s.resume());
  const exit = new Promise<void>((r) => ctl.on('data', makeLineSplitter((l) => l.startsWith('EXIT') && r())));
  ctl.write([...JOB.map((a) => `ARG ${Buffer.from(a).toString('base64')}`), 'RUN', ''].join('\n'));
  await exit;
  const ms = performance.now() - t;
  await exited;
  qmp.close();
  for (const s of servers) s.close();
  for (const c of Object.values(conns)) void c.then((s) => s.destroy());
  rmSync(join(work, 'scratch.qcow2'), { force: true });
  return ms;
}

/** PSS (KiB) of the QEMU processes of this data directory's VMs. */
function qemuPss(): number[] {
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

async function pssOf(n: number, warm: boolean): Promise<number[]> {
  const procs = Array.from({ length: n }, () => spawn(process.execPath, [kiln, 'run', '-q', ...(warm ? [] : ['--cold']), '--data-dir', data, '--', 'sh', '-c', 'head -c 20000000 /dev/zero > /work/z; sleep 8'], { stdio: 'ignore' }));
  let best: number[] = [];
  const t = Date.now();
  while (Date.now() - t < 60_000 && procs.some((p) => p.exitCode === null)) {
    await new Promise((r) => setTimeout(r, 500));
    const now = qemuPss();
    if (now.length === n) best = now;
  }
  await Promise.all(procs.filter((p) => p.exitCode === null).map((p) => new Promise((r) => p.once('exit', r))));
  return best;
}

const a: number[] = [];
const b: number[] = [];
const c: number[] = [];
const prepA: number[] = [];
const prepB: number[] = [];
const work = mkdtempSync(join(tmpdir(), 'kb-'));
try {
  const first = await kilnRun(['-v']);
  if (first.code !== 0 || !/warm start/.test(first.stderr)) throw new Error(`the first warm run failed or was not warm:\n${first.stderr}`);
  const snap = makeSnapshotStore(data).list()[0]!;
  const snapDir = join(makeSnapshotStore(data).dir, snap.id);
  await kilnRun(['-v', '--cold']);
  for (let i = 0; i < RUNS; i++) {
    const ra = await kilnRun(['-v', '--cold']);
    const rb = await kilnRun(['-v']);
    const rc = await bareRestore(snapDir, work);
    if (ra.code !== 0 || rb.code !== 0) throw new Error(`kiln run failed:\n${ra.stderr}\n${rb.stderr}`);
    if (!/warm start/.test(rb.stderr)) throw new Error(`run ${i + 1} was not warm:\n${rb.stderr}`);
    a.push(ra.ms);
    b.push(rb.ms);
    c.push(rc);
    prepA.push(Number(/prepare\s+(\d+) ms/.exec(ra.stderr)?.[1]));
    prepB.push(Number(/prepare\s+(\d+) ms/.exec(rb.stderr)?.[1]));
    process.stderr.write(`run ${i + 1}/${RUNS}: cold ${ra.ms.toFixed(0)} ms, warm ${rb.ms.toFixed(0)} ms, bare restore ${rc.toFixed(0)} ms\n`);
  }
  const pssWarm = await pssOf(3, true);
  const pssCold = await pssOf(1, false);
  const [ma, mb, mc] = [median(a), median(b), median(c)];
  const load = readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
  console.log(`machine: ${cpus().length} x ${cpus()[0]?.model ?? '?'}, accelerator ${accel.accel}, load average at the end ${load}`);
  console.log(`image ${image.digest.slice(7, 19)} (minimal), job \`${JOB.join(' ')}\`, ${RUNS} runs each, alternating; medians [min-max]`);
  console.log(`(a) cold kiln run:          ${ma.toFixed(0)} ms ${range(a)}`);
  console.log(`(b) warm kiln run:          ${mb.toFixed(0)} ms ${range(b)}`);
  console.log(`(c) bare QEMU restore:      ${mc.toFixed(0)} ms ${range(c)}`);
  console.log(`(b)/(a) = ${(mb / ma).toFixed(3)} (target <= 0.15); (b)/(c) = ${(mb / mc).toFixed(3)} (target <= 1.10)`);
  console.log(`prepare: cold ${median(prepA).toFixed(0)} ms ${range(prepA)}, warm ${median(prepB).toFixed(0)} ms ${range(prepB)} (target <= 50 ms)`);
  const avg = (xs: number[]) => xs.reduce((s, x) => s + x, 0) / Math.max(1, xs.length);
  console.log(`PSS: warm ${pssWarm.map((k) => (k / 1024).toFixed(0)).join(', ')} MiB (3 at once), cold ${pssCold.map((k) => (k / 1024).toFixed(0)).join(', ')} MiB (one); ratio ${(avg(pssWarm) / avg(pssCold)).toFixed(2)} (target <= 0.5)`);
} finally {
  rmSync(work, { recursive: true, force: true });
  rmSync(data, { recursive: true, force: true });
}
