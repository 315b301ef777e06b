/**
 * Warm starts end to end: the real CLI, real QEMU (TCG here), the minimal image. One template build per
 * data directory; every other VM here is a restore of it (or a cold boot where a test forces one).
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, cpSync, existsSync, mkdirSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { imageDigest, makeImageStore, type ImageManifest } from '../../src/image/store.ts';
import { makeSnapshotStore } from '../../src/vm/snapshot-store.ts';
import { isAlive } from '../../src/vm/process.ts';
import { assertNoLeaks, ensureImage, kilnArgs, makeTestDataDir, runKiln, SHARED_DIR } from '../support/kiln.ts';
import { damageSnapshotState } from '../support/damage-snapshot.ts';

const data = makeTestDataDir();
// By digest: `minimal` is the newest minimal image in the shared store, which may be another checkout's.
const run = (args: string[]) => runKiln(data.dir, ['run', '--image', image.digest, ...args]);
const snapshots = () => makeSnapshotStore(data.dir).list();
let image: ImageManifest;

before(() => {
  image = ensureImage('amd64');
});
after(() => {
  assertNoLeaks(data.dir);
  data.cleanup();
});

/** What a guest says about itself right after restore. */
const PROBE = 'head -c 16 /dev/urandom | od -An -tx1 | tr -d " \\n"; echo; cat /proc/sys/kernel/random/boot_id /etc/machine-id; hostname; date +%s';

describe('warm starts (minimal image)', () => {
  test('the first run builds a snapshot and is restored from it; -v says warm; --cold says cold', async () => {
    const first = await run(['-v', '--', 'echo', 'hello']);
    assert.equal(first.code, 0, first.stderr.toString());
    assert.equal(first.stdout.toString(), 'hello\n');
    assert.match(first.stderr.toString(), /building a warm-start snapshot of image/);
    assert.match(first.stderr.toString(), /warm start: restored from a snapshot/);
    const list = snapshots();
    assert.equal(list.length, 1);
    assert.equal(list[0]!.key.image, image.digest);
    assert.deepEqual(Object.keys(list[0]!.files).sort(), ['ram', 'scratch.qcow2', 'state']);

    const cold = await run(['-v', '--cold', '--', 'echo', 'hello']);
    assert.equal(cold.code, 0, cold.stderr.toString());
    assert.match(cold.stderr.toString(), /cold start: booted/);
    assert.doesNotMatch(cold.stderr.toString(), /building a warm-start snapshot/);
  });

  test('two VMs restored at once: different RNG output, boot ids, machine ids and hostnames; clocks set to the host\'s', async () => {
    // The snapshot is older than this test by now: an unset guest clock would be behind by that much.
    const created = Date.parse(snapshots()[0]!.created);
    while (Date.now() - created < 4000) await new Promise((r) => setTimeout(r, 250));
    const before = Date.now() / 1000;
    const [a, b] = await Promise.all([run(['-v', '--', 'sh', '-c', PROBE]), run(['-v', '--', 'sh', '-c', PROBE])]);
    const after = Date.now() / 1000;
    for (const r of [a, b]) {
      assert.equal(r.code, 0, r.stderr.toString());
      assert.match(r.stderr.toString(), /warm start/);
    }
    const [ra, rb] = [a, b].map((r) => r.stdout.toString().trim().split('\n'));
    assert.equal(ra!.length, 5, a.stdout.toString());
    for (let i = 0; i < 4; i++) assert.notEqual(ra![i], rb![i], `line ${i} of the probe is the same in both VMs: ${ra![i]}`);
    assert.match(ra![0]!, /^[0-9a-f]{32}$/);
    assert.match(ra![2]!, /^[0-9a-f]{32}$/);
    for (const r of [ra!, rb!]) {
      const guest = Number(r[4]);
      assert.ok(guest >= Math.floor(before) - 1 && guest <= after + 1, `guest clock ${guest} is not within 1 s of the host's (${before.toFixed(1)}..${after.toFixed(1)})`);
    }
  });

  test('a file written by one job is not seen by the next job from the same snapshot', async () => {
    const w = await run(['-q', '--', 'sh', '-c', 'echo one > /work/left; echo one > /root/left; echo one > /etc/left']);
    assert.equal(w.code, 0, w.stderr.toString());
    const r = await run(['-q', '--', 'sh', '-c', 'ls /work/left /root/left /etc/left 2>/dev/null; echo done']);
    assert.equal(r.code, 0, r.stderr.toString());
    assert.equal(r.stdout.toString(), 'done\n');
  });

  test('a job\'s secret environment never lands in a snapshot file', async () => {
    const token = `kiln-secret-${randomBytes(12).toString('hex')}`;
    const r = await run(['-q', '-e', `GITHUB_TOKEN=${token}`, '--', 'sh', '-c', 'echo ${#GITHUB_TOKEN}; echo "$GITHUB_TOKEN" > /work/t']);
    assert.equal(r.code, 0, r.stderr.toString());
    assert.equal(r.stdout.toString(), `${token.length}\n`);
    const g = spawnSync('grep', ['-r', '-a', '-l', '-F', token, makeSnapshotStore(data.dir).dir]);
    assert.equal(g.status, 1, `the token was found in: ${g.stdout.toString()}`);
  });

  test('three VMs restored at once run their jobs correctly', async () => {
    const rs = await Promise.all([1, 2, 3].map((i) => run(['-q', '--', 'sh', '-c', `echo job ${i} > /work/x; cat /work/x`])));
    rs.forEach((r, i) => {
      assert.equal(r.code, 0, r.stderr.toString());
      assert.equal(r.stdout.toString(), `job ${i + 1}\n`);
    });
  });

  test('a damaged snapshot (a changed file) is noticed before the restore, dropped and rebuilt; the job succeeds', async () => {
    const s = snapshots()[0]!;
    const state = join(makeSnapshotStore(data.dir).dir, s.id, 'state');
    chmodSync(state, 0o600);
    writeFileSync(state, randomBytes(1000));
    const r = await run(['-v', '--', 'echo', 'fine']);
    assert.equal(r.code, 0, r.stderr.toString());
    assert.equal(r.stdout.toString(), 'fine\n');
    const lines = r.stderr.toString().split('\n').filter((l) => /dropped/.test(l));
    assert.equal(lines.length, 1, r.stderr.toString());
    assert.match(lines[0]!, /state changed size|state was modified/);
    assert.equal(snapshots().length, 1);
    assert.notEqual(snapshots()[0]!.created, s.created, 'the snapshot was rebuilt');
  });

  test('a snapshot QEMU refuses (damage the cheap checks cannot see) falls back to a cold boot with one line; the next run rebuilds it', async () => {
    const store = makeSnapshotStore(data.dir);
    const s = snapshots()[0]!;
    // Damage under an unchanged stat record (bit rot on disk).
    damageSnapshotState(join(store.dir, s.id));
    const r = await run(['-v', '--', 'echo', 'still fine']);
    assert.equal(r.code, 0, r.stderr.toString());
    assert.equal(r.stdout.toString(), 'still fine\n');
    const lines = r.stderr.toString().split('\n').filter((l) => /warm start failed/.test(l));
    assert.equal(lines.length, 1, r.stderr.toString());
    assert.match(lines[0]!, /booting cold; the snapshot was dropped/);
    assert.match(r.stderr.toString(), /cold start: booted/);
    assert.equal(snapshots().length, 0);
    const next = await run(['-v', '--', 'true']);
    assert.equal(next.code, 0, next.stderr.toString());
    assert.match(next.stderr.toString(), /building a warm-start snapshot/);
    assert.match(next.stderr.toString(), /warm start: restored/);
  });

  test('a new image gets its own snapshot; `kiln image rm` removes an image\'s snapshots', async () => {
    // A second image: the same files with one more kernel command-line word, so a different digest.
    const own = join(data.dir, 'own');
    mkdirSync(join(own, 'images'), { recursive: true });
    symlinkSync(join(SHARED_DIR, 'cache'), join(own, 'cache'));
    const store = makeImageStore(own);
    const staging = store.stagingDir();
    const src = makeImageStore(SHARED_DIR);
    for (const f of [image.kernel, image.initrd]) cpSync(src.pathOf(image, f), join(staging, f.name));
    const { digest: _, ...rest } = image;
    const changed = store.commit(staging, { ...rest, cmdline: ['kiln.variant=1'] });
    assert.notEqual(changed.digest, imageDigest(image));
    const r = await runKiln(own, ['run', '-v', '--image', changed.digest.slice(7, 19), '--', 'echo', 'new image']);
    assert.equal(r.code, 0, r.stderr.toString());
    assert.match(r.stderr.toString(), /building a warm-start snapshot of image/);
    assert.equal(makeSnapshotStore(own).list()[0]?.key.image, changed.digest);
    const rm = await runKiln(own, ['image', 'rm', changed.digest.slice(7, 19)]);
    assert.equal(rm.code, 0, rm.stderr.toString());
    assert.match(rm.stdout.toString(), /and its 1 warm-start snapshot/);
    assert.equal(makeSnapshotStore(own).list().length, 0);
    assertNoLeaks(own);
  });

  test('SIGKILL of kiln during a restore leaves nothing behind once the next kiln has swept', async () => {
    const vms = join(data.dir, 'vms');
    const p = spawn(process.execPath, kilnArgs(data.dir, ['run', '-q', '--', 'sleep', '30']), { stdio: 'ignore' });
    // Kill as soon as the restored QEMU has a pid: the state is loading or the VM was just continued.
    let qemuPid = 0;
    for (let i = 0; i < 600 && !qemuPid; i++) {
      await new Promise((r) => setTimeout(r, 20));
      for (const id of existsSync(vms) ? readdirSync(vms) : []) {
        let pid = 0;
        try {
          pid = Number(readFileSync(join(vms, id, 'qemu.pid'), 'utf8').trim());
        } catch {
          /* not written yet */
        }
        if (pid > 0) qemuPid = pid;
      }
    }
    assert.ok(qemuPid > 0, 'the restored VM started');
    p.kill('SIGKILL');
    await new Promise((r) => p.once('exit', r));
    for (let i = 0; i < 500 && isAlive(qemuPid); i++) await new Promise((r) => setTimeout(r, 10));
    assert.equal(isAlive(qemuPid), false, 'QEMU died with kiln');
    const r = await run(['-q', '--', 'true']);
    assert.equal(r.code, 0, r.stderr.toString());
    assertNoLeaks(data.dir);
    assert.deepEqual(readdirSync(makeSnapshotStore(data.dir).dir).filter((e) => e.startsWith('.')), []);
  });
});
