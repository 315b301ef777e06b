/**
 * npm run bench:vm — what kiln adds on top of QEMU for one job.
 * (a) a bare qemu-system-x86_64 command line boots the same kernel and initramfs; kiln-init sees
 *     kiln.bench=1, reaches the point where it would answer the host, and reboots;
 * (b) `kiln run -- true` does the whole job: prepare, boot, run `true`, teardown.
 * Alternating runs, medians, the ratio (b)/(a), the guest's own uptime at init (the floor), kiln's teardown.
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, symlinkSync, mkdirSync, readFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { makeImageStore } from '../src/image/store.ts';
import { chooseAccel, realHostProbe } from '../src/vm/accel.ts';
import { hostTscKhz, kernelCmdline } from '../src/vm/qemu-args.ts';

const RUNS = Number(process.env.BENCH_RUNS ?? 10);
const repo = resolve(import.meta.dirname, '..');
const shared = process.env.KILN_TEST_SHARED_DIR ?? '/tmp/kiln-test-shared';
const kiln = join(repo, 'bin', 'kiln.js');

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

function timed(cmd: string, args: string[]): Promise<{ ms: number; code: number | null; stderr: string }> {
  return new Promise((done) => {
    const t = performance.now();
    const p = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    p.on('close', (code) => done({ ms: performance.now() - t, code, stderr }));
  });
}

// The image: shared with the tests, built once.
mkdirSync(join(shared, 'cache'), { recursive: true });
let store = makeImageStore(shared);
if (!store.newest('minimal', 'amd64')) {
  const b = spawnSync(process.execPath, [kiln, 'image', 'build', '--arch', 'amd64', '--data-dir', shared], { stdio: 'inherit' });
  if (b.status !== 0) process.exit(1);
  store = makeImageStore(shared);
}
const image = store.newest('minimal', 'amd64')!;
const data = mkdtempSync(join(tmpdir(), 'kiln-bench-'));
symlinkSync(join(shared, 'images'), join(data, 'images'));
symlinkSync(join(shared, 'cache'), join(data, 'cache'));

const accel = chooseAccel('amd64', 'amd64', realHostProbe, 'auto');
const cmdline = kernelCmdline({ arch: 'amd64', ...(accel.accel === 'tcg' ? { tscKhz: hostTscKhz(readFileSync('/proc/cpuinfo', 'utf8')) } : {}), cmdline: ['kiln.bench=1'] });
const bare = [
  '-M', 'microvm,x-option-roms=off,isa-serial=on,acpi=on',
  ...(accel.accel === 'kvm' ? ['-accel', 'kvm', '-cpu', 'host'] : ['-accel', 'tcg,thread=multi,tb-size=128', '-cpu', 'max']),
  '-m', '512M', '-smp', '1', '-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot',
  '-kernel', store.pathOf(image, image.kernel), '-initrd', store.pathOf(image, image.initrd), '-append', cmdline,
  '-serial', 'null',
  '-device', 'virtio-serial-device,max_ports=4',
  '-chardev', 'null,id=c1', '-device', 'virtserialport,chardev=c1,name=kiln.ctl',
  '-chardev', 'null,id=c2', '-device', 'virtserialport,chardev=c2,name=kiln.stdout',
  '-chardev', 'null,id=c3', '-device', 'virtserialport,chardev=c3,name=kiln.stderr',
];

const a: number[] = [];
const b: number[] = [];
const uptime: number[] = [];
const teardown: number[] = [];
const prepare: number[] = [];
try {
  // One warm-up of each (page cache, the scratch disk base made once).
  await timed('qemu-system-x86_64', bare);
  await timed(process.execPath, [kiln, 'run', '-q', '--cold', '--data-dir', data, '--', 'true']);
  for (let i = 0; i < RUNS; i++) {
    const ra = await timed('qemu-system-x86_64', bare);
    if (ra.code !== 0) throw new Error(`bare QEMU failed: ${ra.stderr}`);
    a.push(ra.ms);
    const rb = await timed(process.execPath, [kiln, 'run', '-v', '--cold', '--data-dir', data, '--', 'true']);
    if (rb.code !== 0) throw new Error(`kiln run failed: ${rb.stderr}`);
    b.push(rb.ms);
    const up = /guest uptime at init: (\d+) ms/.exec(rb.stderr)?.[1];
    if (up) uptime.push(Number(up));
    const td = /teardown\s+(\d+) ms/.exec(rb.stderr)?.[1];
    if (td) teardown.push(Number(td));
    const pr = /prepare\s+(\d+) ms/.exec(rb.stderr)?.[1];
    if (pr) prepare.push(Number(pr));
    process.stderr.write(`run ${i + 1}/${RUNS}: bare ${ra.ms.toFixed(0)} ms, kiln ${rb.ms.toFixed(0)} ms\n`);
  }
} finally {
  rmSync(data, { recursive: true, force: true });
}

const ma = median(a);
const mb = median(b);
console.log(`machine: ${cpus().length} x ${cpus()[0]?.model ?? '?'}, accelerator ${accel.accel} (${accel.reason})`);
console.log(`runs: ${RUNS} each, alternating`);
console.log(`(a) bare qemu-system-x86_64 boot to init and exit: median ${ma.toFixed(0)} ms`);
console.log(`(b) kiln run -- true, end to end:               median ${mb.toFixed(0)} ms`);
console.log(`ratio (b)/(a): ${(mb / ma).toFixed(3)}  (target <= 1.10)`);
console.log(`guest uptime at kiln-init (the floor): median ${median(uptime).toFixed(0)} ms`);
console.log(`kiln prepare: median ${median(prepare).toFixed(0)} ms; teardown after guest exit: median ${median(teardown).toFixed(0)} ms (target < 100 ms)`);
