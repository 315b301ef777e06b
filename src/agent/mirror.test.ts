import assert from 'node:assert/strict';
import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { isKilnError } from '../core/errors.ts';
import { RegistryMirror, diskUsage } from './mirror.ts';

void test('diskUsage counts allocated bytes recursively; a missing directory is 0', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'kiln-du-'));
  try {
    assert.equal(await diskUsage(join(dir, 'missing')), 0);
    await mkdir(join(dir, 'a', 'b'), { recursive: true });
    await writeFile(join(dir, 'a', 'b', 'blob'), Buffer.alloc(100_000, 1));
    const n = await diskUsage(dir);
    assert.ok(n >= 100_000, `${n}`);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

void test('the mirror refuses bad addresses and upstreams before starting anything', () => {
  assert.throws(() => new RegistryMirror({ dataDir: '/tmp/x', listen: '0.0.0.0' }), (e) => isKilnError(e, 'mirror.address_invalid'));
  assert.throws(() => new RegistryMirror({ dataDir: '/tmp/x', listen: '127.0.0.1:5000', guestAddress: 'http://10.0.2.2:5000' }), (e) => isKilnError(e, 'mirror.address_invalid'));
  assert.throws(() => new RegistryMirror({ dataDir: '/tmp/x', listen: '127.0.0.1:5000', upstream: { url: 'https://hub.example/sub/path' } }), (e) => isKilnError(e, 'mirror.upstream_invalid'));
  const m = new RegistryMirror({ dataDir: '/tmp/x', listen: '127.0.0.1:5000' });
  assert.equal(m.configFile, '/tmp/x/mirror/config.yml');
});

void test('status of a mirror never started: stopped, unhealthy, Docker Hub upstream', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'kiln-mirror-'));
  try {
    const s = await new RegistryMirror({ dataDir: dir, listen: '127.0.0.1:5000', guestAddress: '10.0.2.2:5000' }).status();
    assert.deepEqual(s, { state: 'stopped', healthy: false, restarts: 0, cacheBytes: 0, upstream: 'https://registry-1.docker.io', address: '127.0.0.1:5000', registry: 'docker.io', guestAddress: '10.0.2.2:5000' });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
