import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isKilnError } from '../core/errors.ts';
import { statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { cgroupMark, chainFor, EGRESS_MARK_TAG, egressScript, hostNetworksFrom, parseAllowEntry, resolversFrom, vmNameOfChain } from './egress.ts';
import { MIRROR_GUEST_ADDRESS, mirrorForward } from './forwards.ts';

void test('allowlist entries: addresses, CIDRs and names; anything else is refused with the forms that work', () => {
  assert.deepEqual(parseAllowEntry('203.0.113.7'), { kind: 'cidr', family: 4, cidr: '203.0.113.7/32' });
  assert.deepEqual(parseAllowEntry('10.1.0.0/16'), { kind: 'cidr', family: 4, cidr: '10.1.0.0/16' });
  assert.deepEqual(parseAllowEntry('2001:db8::/48'), { kind: 'cidr', family: 6, cidr: '2001:db8::/48' });
  assert.deepEqual(parseAllowEntry('API.github.com'), { kind: 'name', name: 'api.github.com' });
  for (const bad of ['10.0.0.0/33', '10.0.0.1/8/9', 'http://x', 'a b', '', '1.2.3', '-x.com', 'x.com/24', '10.0.0.0/']) {
    assert.throws(() => parseAllowEntry(bad), (e) => isKilnError(e, 'input.bad_egress_allow'), bad);
  }
});

void test('the script opens the allowlist and DNS first, then closes the host (but to the VM\'s own sockets), its networks and the closed ranges', () => {
  const s = egressScript({
    chain: chainFor('vm1.abcd'),
    cgroupPath: 'unified/kiln/vm1.abcd',
    cgroupLevel: 2,
    mark: 0x6b000571,
    allow4: ['10.9.0.0/16'],
    allow6: [],
    resolvers4: ['10.255.255.53'],
    resolvers6: [],
    hostNets4: ['172.31.0.0/20'],
    hostNets6: [],
  });
  const lines = s.trim().split('\n');
  const at = (re: RegExp) => lines.findIndex((l) => re.test(l));
  assert.ok(at(/ip daddr \{ 10\.9\.0\.0\/16 \} accept/) >= 0);
  assert.ok(at(/ip daddr \{ 10\.255\.255\.53 \} udp dport 53 accept/) >= 0);
  assert.ok(at(/accept/) < at(/fib daddr type local meta mark set 0x6b000571 accept/), 'allowed before anything is closed');
  // Local destinations are decided on input: the VM's own sockets (slirp's socket pair for a forward) only.
  const input = lines.filter((l) => l.startsWith('add rule inet kiln_egress input '));
  assert.deepEqual(
    input.map((l) => l.replace(/ comment .*/, '')),
    [
      'add rule inet kiln_egress input meta mark 0x6b000571 ct state established,related accept',
      'add rule inet kiln_egress input meta mark 0x6b000571 socket cgroupv2 level 2 "unified/kiln/vm1.abcd" accept',
      'add rule inet kiln_egress input meta mark 0x6b000571 meta l4proto tcp reject with tcp reset',
      'add rule inet kiln_egress input meta mark 0x6b000571 reject with icmpx type admin-prohibited',
    ],
  );
  for (const l of input) assert.ok(l.endsWith(`comment "${chainFor('vm1.abcd')}"`), 'each input rule names its VM, for removal');
  assert.equal(lines.filter((l) => /reject/.test(l) && l.includes('fib daddr type local')).length, 0, 'no local destination is refused before input sees it');
  const closed = lines[at(/ip daddr \{ 0\.0\.0\.0\/8/)]!;
  for (const r of ['10.0.0.0/8', '127.0.0.0/8', '169.254.0.0/16', '172.16.0.0/12', '192.168.0.0/16', '100.64.0.0/10', '172.31.0.0/20']) assert.ok(closed.includes(r), r);
  assert.match(lines.at(-1)!, /^add rule inet kiln_egress output socket cgroupv2 level 2 "unified\/kiln\/vm1\.abcd" jump vm_/);
  assert.equal(vmNameOfChain(chainFor('run-1a.ff00')), 'run-1a.ff00');
});

void test("a VM's mark is kiln's tag byte plus the low 24 bits of its cgroup's id", () => {
  const m = cgroupMark(tmpdir());
  assert.equal(m >>> 24, EGRESS_MARK_TAG >>> 24);
  assert.equal(m & 0xffffff, statSync(tmpdir()).ino % 0x1000000);
});

void test('resolvers and host networks are read from resolv.conf and ip -j route', () => {
  assert.deepEqual(resolversFrom('# x\nnameserver 10.255.255.53\nnameserver fe80::1%eth0\nsearch a\n'), { v4: ['10.255.255.53'], v6: ['fe80::1'] });
  const routes = JSON.stringify([
    { dst: 'default', gateway: '172.31.0.1', dev: 'eth0' },
    { dst: '172.31.0.0/20', dev: 'eth0', scope: 'link' },
    { type: 'local', dst: '127.0.0.1', dev: 'lo', scope: 'host' },
    { type: 'broadcast', dst: '172.31.15.255', dev: 'eth0', scope: 'link' },
  ]);
  assert.deepEqual(hostNetworksFrom(routes), ['172.31.0.0/20']);
  assert.deepEqual(hostNetworksFrom('not json'), []);
});

void test('a mirror on the host loopback is forwarded to the one guest address', () => {
  assert.deepEqual(mirrorForward('127.0.0.1:5001'), { guestAddr: '10.0.2.100', guestPort: 5000, hostPort: 5001 });
  assert.deepEqual(mirrorForward('localhost:5000')?.hostPort, 5000);
  assert.equal(mirrorForward('192.168.1.2:5000'), undefined);
  assert.equal(MIRROR_GUEST_ADDRESS, '10.0.2.100:5000');
});
