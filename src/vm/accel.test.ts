import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chooseAccel, type HostProbe } from './accel.ts';

const probe = (files: Record<string, string>, unreadable: string[] = []): HostProbe => ({
  exists: (p) => p in files,
  readable: (p) => p in files && !unreadable.includes(p),
  read: (p) => files[p] ?? '',
});

test('KVM only when the device, the CPU flags and the module agree', () => {
  const good = probe({ '/dev/kvm': '', '/proc/cpuinfo': 'flags\t: fpu vmx sse\n', '/sys/module/kvm_intel': '' });
  assert.equal(chooseAccel('amd64', 'amd64', good).accel, 'kvm');
});

test('the device node alone is not usable KVM (kvm_pvm, no vmx/svm)', () => {
  const pvm = probe({ '/dev/kvm': '', '/proc/cpuinfo': 'flags\t: fpu hypervisor\n', '/sys/module/kvm_pvm': '' });
  const c = chooseAccel('amd64', 'amd64', pvm);
  assert.equal(c.accel, 'tcg');
  assert.match(c.reason, /kvm_pvm/);
  const noflags = probe({ '/dev/kvm': '', '/proc/cpuinfo': 'flags\t: fpu hypervisor\n' });
  assert.match(chooseAccel('amd64', 'amd64', noflags).reason, /neither vmx nor svm/);
  const nomod = probe({ '/dev/kvm': '', '/proc/cpuinfo': 'flags\t: svm\n' });
  assert.match(chooseAccel('amd64', 'amd64', nomod).reason, /kvm_amd/);
});

test('a foreign guest architecture is always emulated, and says so', () => {
  const good = probe({ '/dev/kvm': '', '/proc/cpuinfo': 'flags\t: vmx\n', '/sys/module/kvm_intel': '' });
  const c = chooseAccel('arm64', 'amd64', good);
  assert.equal(c.accel, 'tcg');
  assert.match(c.reason, /arm64 guest on a amd64 host/);
});

test('overrides', () => {
  const none = probe({});
  assert.equal(chooseAccel('amd64', 'amd64', none, 'tcg').accel, 'tcg');
  assert.equal(chooseAccel('amd64', 'amd64', none, 'kvm').accel, 'kvm');
  assert.equal(chooseAccel('amd64', 'amd64', probe({ '/dev/kvm': '' }, ['/dev/kvm'])).accel, 'tcg');
});
