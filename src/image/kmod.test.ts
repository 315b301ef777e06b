import { test } from 'node:test';
import assert from 'node:assert/strict';
import { moduleDepends, orderModules } from './kmod.ts';

test('reads depends= from a module image', () => {
  const ko = Buffer.concat([Buffer.from('\x7fELF junk\0license=GPL\0depends=virtio,virtio_ring\0intree=Y\0')]);
  assert.deepEqual(moduleDepends(ko), ['virtio', 'virtio_ring']);
  assert.deepEqual(moduleDepends(Buffer.from('\0depends=\0')), []);
});

test('orders dependencies first, skips built-ins, reports missing', () => {
  const deps: Record<string, string[]> = {
    virtio_net: ['net_failover', 'virtio', 'virtio_ring'],
    net_failover: ['failover'],
    failover: [],
    virtio: [],
    virtio_ring: [],
    virtio_blk: ['virtio', 'virtio_ring'],
  };
  const available = new Map(Object.keys(deps).map((k) => [k, `kernel/${k}.ko`]));
  const r = orderModules(['virtio_blk', 'virtio-net', 'virtio_mmio', 'nope'], available, new Set(['virtio_mmio']), (n) => deps[n] ?? []);
  assert.deepEqual(r.missing, ['nope']);
  for (const [m, ds] of Object.entries(deps)) {
    if (!r.order.includes(m)) continue;
    for (const d of ds) assert.ok(r.order.indexOf(d) < r.order.indexOf(m), `${d} before ${m}`);
  }
  assert.equal(r.order.length, 6);
});

test('a dependency cycle is an error, not a hang', () => {
  const available = new Map([['a', 'a.ko'], ['b', 'b.ko']]);
  assert.throws(() => orderModules(['a'], available, new Set(), (n) => (n === 'a' ? ['b'] : ['a'])), /cycle/);
});
