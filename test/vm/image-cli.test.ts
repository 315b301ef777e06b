/** `kiln image build|ls|rm` through the real CLI, from real Debian packages. */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { makeImageStore, shortId } from '../../src/image/store.ts';
import { runKiln, SHARED_DIR } from '../support/kiln.ts';

// Own images/ (so builds here are real builds), shared package cache (so CI downloads each .deb once).
const dir = mkdtempSync(join(tmpdir(), 'kiln-img-'));
mkdirSync(join(SHARED_DIR, 'cache'), { recursive: true });
symlinkSync(join(SHARED_DIR, 'cache'), join(dir, 'cache'));
after(() => rmSync(dir, { recursive: true, force: true }));

test('the same packages build the same image digest; ls lists it; rm removes it', async () => {
  const first = await runKiln(dir, ['image', 'build', '--arch', 'amd64']);
  assert.equal(first.code, 0, first.stderr.toString());
  const digest = first.stdout.toString().trim();
  assert.match(digest, /^sha256:[0-9a-f]{64}$/);
  assert.match(first.stderr.toString(), /built minimal image [0-9a-f]{12} for amd64 \(kernel 6\.\d+\.\d+-\d+-cloud-amd64/);

  // Build again from scratch (remove the stored image first): the digest must not change.
  const store = makeImageStore(dir);
  const m = store.list()[0]!;
  store.remove(m);
  const second = await runKiln(dir, ['image', 'build', '--arch', 'amd64']);
  assert.equal(second.stdout.toString().trim(), digest, 'content-addressed: same inputs, same digest');

  // GNU cpio, an independent reader, sees kiln-init, busybox and the virtio modules.
  const listing = spawnSync('sh', ['-c', `cpio -it --quiet < '${store.pathOf(m, m.initrd)}'`], { encoding: 'utf8' });
  assert.equal(listing.status, 0, listing.stderr);
  for (const want of ['init', 'bin/busybox', 'etc/kiln/modules']) assert.ok(listing.stdout.split('\n').includes(want), `initramfs has ${want}`);
  assert.match(listing.stdout, /virtio_console\.ko/);
  assert.match(listing.stdout, /virtio_blk\.ko/);

  const ls = await runKiln(dir, ['image', 'ls']);
  assert.match(ls.stdout.toString(), new RegExp(`^${shortId(digest)}\\s+amd64\\s+minimal\\s+6\\.`, 'm'));
  const json = JSON.parse((await runKiln(dir, ['image', 'ls', '--json'])).stdout.toString()) as { digest: string; kernelVersion: string }[];
  assert.equal(json[0]?.digest, digest);

  const rm = await runKiln(dir, ['image', 'rm', shortId(digest)]);
  assert.equal(rm.code, 0);
  assert.deepEqual(readdirSync(join(dir, 'images')).filter((e) => !e.startsWith('.')), []);
  const again = await runKiln(dir, ['image', 'rm', shortId(digest)]);
  assert.notEqual(again.code, 0);
  assert.match(again.stderr.toString(), /no image/);
});

test('unknown profile and arch are refused with a hint', async () => {
  const r = await runKiln(dir, ['image', 'build', '--profile', 'huge']);
  assert.notEqual(r.code, 0);
  assert.match(r.stderr.toString(), /unknown image profile "huge"[\s\S]*how to fix: use one of: minimal/);
  const a = await runKiln(dir, ['image', 'build', '--arch', 'mips']);
  assert.match(a.stderr.toString(), /unknown architecture "mips"/);
});
