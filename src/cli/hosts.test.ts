import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mirrorCell, snapshotCell } from './hosts.ts';

void test('the MIRROR column of kiln hosts ls', () => {
  const base = { state: 'running' as const, upstream: 'https://registry-1.docker.io', address: '127.0.0.1:5000' };
  assert.equal(mirrorCell(null), '-');
  assert.equal(mirrorCell({ ...base, healthy: true, restarts: 0, cacheBytes: 12.3 * 1024 * 1024 }), 'healthy 12.3M');
  assert.equal(mirrorCell({ ...base, state: 'backoff', healthy: false, restarts: 3, cacheBytes: 0 }), 'down (3 restarts)');
  assert.equal(mirrorCell({ ...base, healthy: false, restarts: 1, cacheBytes: 0 }), 'down (1 restart)');
  const ghcr = { ...base, registry: 'ghcr.io', upstream: 'https://ghcr.io', address: '127.0.0.1:5001', restarts: 0, cacheBytes: 0 };
  assert.equal(mirrorCell({ ...base, healthy: true, restarts: 0, cacheBytes: 1024, others: [{ ...ghcr, healthy: true }] }), 'healthy 1K +1');
  assert.equal(mirrorCell({ ...base, healthy: true, restarts: 0, cacheBytes: 1024, others: [{ ...ghcr, healthy: true }, { ...ghcr, registry: 'quay.io', healthy: false }] }), 'healthy 1K +2, 1 down');
});

void test('the WARM column of kiln hosts ls counts the host\'s snapshots by state', () => {
  const s = { image: 'ci', arch: 'amd64' as const, cpus: 2, memoryBytes: 2 ** 30, diskBytes: 2 ** 30, uses: 1 };
  assert.equal(snapshotCell(null), '-');
  assert.equal(snapshotCell([]), '-');
  assert.equal(snapshotCell([{ ...s, state: 'ready' }, { ...s, state: 'ready', cpus: 4 }, { ...s, state: 'building', cpus: 8 }]), '2 ready, 1 building');
  assert.equal(snapshotCell([{ ...s, state: 'failed', error: 'no space' }]), '1 failed');
});
