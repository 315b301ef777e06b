import assert from 'node:assert/strict';
import { test } from 'node:test';
import { MIRROR_GUEST_ADDRESS, mirrorVmSettings } from './forwards.ts';

void test('mirror VM settings: docker.io at 10.0.2.100:5000, other registries at 10.0.2.101+ on 5000, 80 and 443', () => {
  const s = mirrorVmSettings([
    { registry: 'docker.io', hostPort: 5000 },
    { registry: 'ghcr.io', hostPort: 5001 },
    { registry: 'quay.io', hostPort: 5002 },
  ]);
  assert.equal(s.registryMirror, MIRROR_GUEST_ADDRESS);
  assert.deepEqual(s.registryMirrors, [
    { registry: 'ghcr.io', address: '10.0.2.101:5000' },
    { registry: 'quay.io', address: '10.0.2.102:5000' },
  ]);
  assert.deepEqual(
    s.forwards.map((f) => `${f.guestAddr}:${f.guestPort}>${f.hostPort}`),
    ['10.0.2.100:5000>5000', '10.0.2.101:5000>5001', '10.0.2.101:80>5001', '10.0.2.101:443>5001', '10.0.2.102:5000>5002', '10.0.2.102:80>5002', '10.0.2.102:443>5002'],
  );
  const only = mirrorVmSettings([{ registry: 'ghcr.io', hostPort: 6000 }]);
  assert.equal(only.registryMirror, undefined);
  assert.deepEqual(only.registryMirrors, [{ registry: 'ghcr.io', address: '10.0.2.101:5000' }]);
  assert.deepEqual(mirrorVmSettings([]), { forwards: [] });
  assert.throws(() => mirrorVmSettings([{ registry: 'docker.io', hostPort: 1 }, { registry: 'docker.io', hostPort: 2 }]));
});
