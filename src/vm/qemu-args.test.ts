import { test } from 'node:test';
import assert from 'node:assert/strict';
import { buildQemuArgs, hostTscKhz, kernelCmdline, type QemuLaunch } from './qemu-args.ts';

const base: QemuLaunch = {
  id: 'x1',
  arch: 'amd64',
  accel: 'tcg',
  cpus: 2,
  memoryMiB: 512,
  kernel: '/k',
  initrd: '/i',
  sockets: { qmp: '/d/qmp.sock', ctl: '/d/ctl.sock', stdout: '/d/out.sock', stderr: '/d/err.sock' },
  consoleLog: '/d/console.log',
  pidFile: '/d/qemu.pid',
  scratchDisk: '/d/scratch.qcow2',
};
const after = (args: string[], flag: string) => args.filter((_, i) => args[i - 1] === flag);

test('x86-64 uses microvm with virtio-mmio devices and no network by default', () => {
  const a = buildQemuArgs(base);
  assert.equal(after(a, '-M')[0], 'microvm,x-option-roms=off,isa-serial=on,acpi=on');
  assert.deepEqual(after(a, '-accel'), ['tcg,thread=multi,tb-size=128']);
  assert.ok(a.includes('-nodefaults') && a.includes('-no-reboot'));
  assert.ok(!a.some((x) => x.startsWith('user,')), 'no NIC unless asked');
  assert.deepEqual(after(a, '-device').filter((d) => d.startsWith('virtserialport')).map((d) => /name=([^,]+)/.exec(d)?.[1]), ['kiln.ctl', 'kiln.stdout', 'kiln.stderr']);
  assert.ok(after(a, '-drive')[0]?.startsWith('id=scratch,file=/d/scratch.qcow2,format=qcow2'));
});

test('arm64 uses virt and the PL011 console; KVM uses the host CPU', () => {
  const a = buildQemuArgs({ ...base, arch: 'arm64', accel: 'kvm' });
  assert.equal(after(a, '-M')[0], 'virt,gic-version=max');
  assert.deepEqual(after(a, '-cpu'), ['host']);
  assert.match(after(a, '-append')[0] ?? '', /console=ttyAMA0/);
});

test('network: restricted with forwards, or open', () => {
  const closed = buildQemuArgs({ ...base, network: { restrict: true, forwards: [{ guestAddr: '10.0.2.100', guestPort: 5000, hostPort: 41234 }] } });
  assert.deepEqual(after(closed, '-netdev'), ['user,id=n0,restrict=on,guestfwd=tcp:10.0.2.100:5000-tcp:127.0.0.1:41234']);
  const open = buildQemuArgs({ ...base, network: { restrict: false, forwards: [] } });
  assert.deepEqual(after(open, '-netdev'), ['user,id=n0,restrict=off']);
});

test('the TSC rate is passed to x86-64 TCG guests only', () => {
  assert.match(kernelCmdline({ arch: 'amd64', tscKhz: 2596138 }), /tsc_early_khz=2596138 tsc=reliable/);
  assert.doesNotMatch(kernelCmdline({ arch: 'arm64', tscKhz: 2596138 }), /tsc/);
  assert.equal(hostTscKhz('processor\t: 0\ncpu MHz\t\t: 2596.138\n'), 2596138);
  assert.equal(hostTscKhz('Features: fp asimd'), undefined);
});

test('warm starts: RAM in a file (shared for a template, private for a restore) and -incoming defer', () => {
  const tpl = buildQemuArgs({ ...base, ramFile: { path: '/d/snap,1/ram', shared: true } });
  assert.equal(after(tpl, '-M')[0], 'microvm,x-option-roms=off,isa-serial=on,acpi=on,memory-backend=pc.ram');
  assert.ok(tpl.includes(`memory-backend-file,id=pc.ram,size=${base.memoryMiB}M,mem-path=/d/snap,,1/ram,share=on`), 'commas in the path are escaped');
  assert.ok(!tpl.includes('-incoming'));
  const restored = buildQemuArgs({ ...base, arch: 'arm64', ramFile: { path: '/d/ram', shared: false }, incomingDefer: true });
  assert.equal(after(restored, '-M')[0], 'virt,gic-version=max,memory-backend=pc.ram');
  assert.ok(restored.includes(`memory-backend-file,id=pc.ram,size=${base.memoryMiB}M,mem-path=/d/ram,share=off`));
  assert.deepEqual(after(restored, '-incoming'), ['defer']);
  assert.ok(!buildQemuArgs(base).some((a) => a.includes('memory-backend')), 'cold VMs keep anonymous RAM');
});
