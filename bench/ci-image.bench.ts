/**
 * npm run bench:ci-image — time to Docker ready in the ci guest image, kiln against bare QEMU.
 * (a) a bare qemu-system-x86_64 command line boots the same kernel, initramfs and root disk (a fresh qcow2
 *     overlay per run, plus a scratch disk like kiln's); kiln-init sees kiln.bench=1, starts containerd and
 *     dockerd, waits until Docker answers, and reboots, which ends QEMU;
 * (b) `kiln run --image <ci> -- docker info`: prepare, boot until Docker answers, run `docker info`, teardown.
 * Alternating runs (BENCH_RUNS, default 5), medians, the ratio (b)/(a). Builds the ci image if needed.
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { makeImageStore } from '../src/image/store.ts';
import { chooseAccel, realHostProbe } from '../src/vm/accel.ts';
import { ensureScratchBase } from '../src/vm/disks.ts';
import { hostTscKhz, kernelCmdline } from '../src/vm/qemu-args.ts';

const RUNS = Number(process.env.BENCH_RUNS ?? 5);
const repo = resolve(import.meta.dirname, '..');
const shared = process.env.KILN_TEST_SHARED_DIR ?? '/tmp/kiln-test-shared';
const kiln = join(repo, 'bin', 'kiln.js');
const MEMORY = '1G';
const DISK = 10 * 1024 * 1024 * 1024;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

function timed(cmd: string, args: string[]): Promise<{ ms: number; code: number | null; stderr: string; stdout: string }> {
  return new Promise((done) => {
    const t = performance.now();
    const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    let stdout = '';
    p.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    p.on('close', (code) => done({ ms: performance.now() - t, code, stderr, stdout }));
  });
}

function must(cmd: string, args: string[]): void {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed: ${r.stderr}`);
}

mkdirSync(join(shared, 'cache'), { recursive: true });
let store = makeImageStore(shared);
if (!store.newest('ci', 'amd64')) {
  const b = spawnSync(process.execPath, [kiln, 'image', 'build', '--profile', 'ci', '--arch', 'amd64', '--data-dir', shared], { stdio: 'inherit' });
  if (b.status !== 0) process.exit(1);
  store = makeImageStore(shared);
}
const image = store.newest('ci', 'amd64')!;
const data = mkdtempSync(join(tmpdir(), 'kiln-bench-'));
symlinkSync(join(shared, 'images'), join(data, 'images'));
symlinkSync(join(shared, 'cache'), join(data, 'cache'));
const scratchBase = await ensureScratchBase(join(shared, 'cache', 'disks'), DISK);

const accel = chooseAccel('amd64', 'amd64', realHostProbe, 'auto');
const cmdline = kernelCmdline({ arch: 'amd64', ...(accel.accel === 'tcg' ? { tscKhz: hostTscKhz(readFileSync('/proc/cpuinfo', 'utf8')) } : {}), cmdline: ['kiln.bench=1'] });
const bare = (dir: string) => [
  '-M', 'microvm,x-option-roms=off,isa-serial=on,acpi=on',
  ...(accel.accel === 'kvm' ? ['-accel', 'kvm', '-cpu', 'host'] : ['-accel', 'tcg,thread=multi,tb-size=128', '-cpu', 'max']),
  '-m', MEMORY, '-smp', '1', '-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot',
  '-kernel', store.pathOf(image, image.kernel), '-initrd', store.pathOf(image, image.initrd), '-append', cmdline,
  '-serial', `file:${join(dir, 'console.log')}`,
  '-device', 'virtio-serial-device,max_ports=4',
  '-chardev', 'null,id=c1', '-device', 'virtserialport,chardev=c1,name=kiln.ctl',
  '-chardev', 'null,id=c2', '-device', 'virtserialport,chardev=c2,name=kiln.stdout',
  '-chardev', 'null,id=c3', '-device', 'virtserialport,chardev=c3,name=kiln.stderr',
  // Same devices in the same order as kiln's driver (src/vm/qemu-args.ts): scratch disk, then root disk.
  '-drive', `id=scratch,file=${join(dir, 'scratch.qcow2')},format=qcow2,if=none,cache=unsafe,discard=unmap`, '-device', 'virtio-blk-device,drive=scratch',
  '-drive', `id=root,file=${join(dir, 'root.qcow2')},format=qcow2,if=none,cache=unsafe,discard=unmap`, '-device', 'virtio-blk-device,drive=root',
];

async function bareRun(): Promise<number> {
  const dir = mkdtempSync(join(tmpdir(), 'kiln-bench-bare-'));
  try {
    must('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', store.pathOf(image, image.rootDisk!), join(dir, 'root.qcow2')]);
    must('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', scratchBase, join(dir, 'scratch.qcow2'), String(DISK)]);
    const r = await timed('qemu-system-x86_64', bare(dir));
    const console = readFileSync(join(dir, 'console.log'), 'utf8');
    if (r.code !== 0 || !console.includes('kiln-init: docker-ready')) throw new Error(`bare QEMU did not reach Docker ready: ${r.stderr}\n${console.slice(-2000)}`);
    return r.ms;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const a: number[] = [];
const b: number[] = [];
const boot: number[] = [];
try {
  await bareRun();
  await timed(process.execPath, [kiln, 'run', '-q', '--image', image.digest, '--memory', MEMORY, '--data-dir', data, '--', 'docker', 'info']);
  for (let i = 0; i < RUNS; i++) {
    const ra = await bareRun();
    a.push(ra);
    const rb = await timed(process.execPath, [kiln, 'run', '-v', '--image', image.digest, '--memory', MEMORY, '--data-dir', data, '--', 'docker', 'info']);
    if (rb.code !== 0 || !/Server Version/.test(rb.stdout)) throw new Error(`kiln run failed: ${rb.stderr}`);
    b.push(rb.ms);
    const bt = /boot\s+(\d+) ms/.exec(rb.stderr)?.[1];
    if (bt) boot.push(Number(bt));
    process.stderr.write(`run ${i + 1}/${RUNS}: bare ${ra.toFixed(0)} ms, kiln ${rb.ms.toFixed(0)} ms\n`);
  }
} finally {
  rmSync(data, { recursive: true, force: true });
}

const ma = median(a);
const mb = median(b);
console.log(`machine: ${cpus().length} x ${cpus()[0]?.model ?? '?'}, accelerator ${accel.accel} (${accel.reason})`);
console.log(`image: ci ${image.digest.slice(7, 19)} (amd64, root disk ${(image.rootDisk!.size / 2 ** 20).toFixed(0)} MiB qcow2), guest ${MEMORY}, 1 vCPU`);
console.log(`runs: ${RUNS} each, alternating`);
console.log(`(a) bare qemu-system-x86_64, boot until Docker answers, exit: median ${ma.toFixed(0)} ms`);
console.log(`(b) kiln run --image ci -- docker info, end to end:           median ${mb.toFixed(0)} ms`);
console.log(`    of which kiln's boot phase (QEMU start to READY, Docker ready): median ${median(boot).toFixed(0)} ms`);
console.log(`ratio (b)/(a): ${(mb / ma).toFixed(3)}`);
