/** `kiln snapshots` and `kiln image verify` through the real CLI, on stores filled without VMs. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import { makeImageStore } from '../../src/image/store.ts';
import { makeSnapshotStore, type SnapshotKey } from '../../src/vm/snapshot-store.ts';
import { runKiln } from '../support/kiln.ts';

const sha = (b: string) => createHash('sha256').update(b).digest('hex');

function fill(dir: string) {
  const images = makeImageStore(dir);
  const staging = images.stagingDir();
  writeFileSync(join(staging, 'vmlinuz'), 'kernel');
  writeFileSync(join(staging, 'initrd.cpio'), 'initrd');
  const image = images.commit(staging, {
    arch: 'amd64',
    profile: 'minimal',
    kernelVersion: '6.1',
    packages: [],
    created: new Date().toISOString(),
    kernel: { name: 'vmlinuz', sha256: sha('kernel'), size: 6 },
    initrd: { name: 'initrd.cpio', sha256: sha('initrd'), size: 6 },
  });
  return { images, image };
}

async function addSnapshot(dir: string, key: SnapshotKey) {
  const store = makeSnapshotStore(dir);
  const s = store.staging();
  for (const f of ['ram', 'state', 'scratch.qcow2']) writeFileSync(join(s, f), f);
  return store.commit(s, key, 1);
}

test('kiln snapshots ls, verify and rm; kiln image rm takes an image\'s snapshots with it', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'kiln-snapcli-'));
  try {
    const { image } = fill(dir);
    const key: SnapshotKey = { image: image.digest, arch: 'amd64', cpus: 1, memoryBytes: 512 * 2 ** 20, diskBytes: 10 * 2 ** 30, devices: 'x', qemu: 'q', init: 2, accel: 'tcg' };
    const a = await addSnapshot(dir, key);
    const b = await addSnapshot(dir, { ...key, cpus: 2 });
    const c = await addSnapshot(dir, { ...key, devices: 'x blk:cache', cacheBytes: 64 * 2 ** 20 });
    const ls = await runKiln(dir, ['snapshots', 'ls']);
    assert.equal(ls.code, 0, ls.stderr.toString());
    assert.match(ls.stdout.toString(), /^ID\s+IMAGE\s+ARCH\s+CPUS\s+MEMORY\s+DISK\s+CACHE\s+ACCEL\s+SIZE\s+LAST USED$/m);
    assert.match(ls.stdout.toString(), new RegExp(`^${a.id.slice(0, 12)}\\s+${image.digest.slice(7, 19)}\\s+amd64\\s+1\\s+512M\\s+10G\\s+-\\s+tcg`, 'm'));
    // A snapshot with a cache slot is its own (another id) and shows the slot's size.
    assert.notEqual(c.id, a.id);
    assert.match(ls.stdout.toString(), new RegExp(`^${c.id.slice(0, 12)}\\s+${image.digest.slice(7, 19)}\\s+amd64\\s+1\\s+512M\\s+10G\\s+64M\\s+tcg`, 'm'));
    const json = JSON.parse((await runKiln(dir, ['snapshots', 'ls', '--json'])).stdout.toString()) as { id: string }[];
    assert.deepEqual(json.map((s) => s.id).sort(), [a.id, b.id, c.id].sort());

    // A snapshot file changed behind the store's back: verify removes it.
    const state = join(makeSnapshotStore(dir).dir, b.id, 'state');
    chmodSync(state, 0o600);
    writeFileSync(state, 'STATE');
    const v = await runKiln(dir, ['snapshots', 'verify']);
    assert.equal(v.code, 0, v.stderr.toString());
    assert.match(v.stdout.toString(), new RegExp(`ok ${a.id.slice(0, 12)}`));
    assert.match(v.stderr.toString(), new RegExp(`snapshot ${b.id.slice(0, 12)} was damaged .*removed`));

    const missing = await runKiln(dir, ['snapshots', 'rm', 'abcdef']);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr.toString(), /no snapshot "abcdef" \[snapshot\.not_found\]/);

    const rm = await runKiln(dir, ['image', 'rm', image.digest.slice(7, 19)]);
    assert.equal(rm.code, 0, rm.stderr.toString());
    assert.match(rm.stdout.toString(), /and its 2 warm-start snapshot\(s\)/);
    assert.equal(makeSnapshotStore(dir).list().length, 0);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('kiln image verify hashes every file again and names a damaged image', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'kiln-verifycli-'));
  try {
    const { images, image } = fill(dir);
    const ok = await runKiln(dir, ['image', 'verify']);
    assert.equal(ok.code, 0, ok.stderr.toString());
    assert.equal(ok.stdout.toString(), `ok ${image.digest.slice(7, 19)}\n`);
    writeFileSync(images.pathOf(image, image.initrd), 'INITRD');
    const bad = await runKiln(dir, ['image', 'verify', image.digest.slice(7, 19)]);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr.toString(), /initrd.cpio does not match its digest/);
    assert.match(bad.stderr.toString(), /1 image\(s\) are damaged \[image\.corrupt\]/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
