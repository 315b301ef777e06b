/**
 * Warm cache disks end to end: the real CLI, real QEMU (TCG here), the minimal image, `kiln run --cache`.
 * Each test uses its own cache key in one data directory. Warm starts are on (kiln run's default): a cache
 * job restores from a snapshot with a cache slot of its cache's size (built by the first job of that size).
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { ImageManifest } from '../../src/image/store.ts';
import { cacheId, makeCacheStore } from '../../src/vm/cache-store.ts';
import { makeSnapshotStore } from '../../src/vm/snapshot-store.ts';
import { assertNoLeaks, ensureImage, kilnArgs, makeTestDataDir, runKiln } from '../support/kiln.ts';
import { damageSnapshotState } from '../support/damage-snapshot.ts';

const data = makeTestDataDir();
let image: ImageManifest;
// By digest: `minimal` is the newest minimal image in the shared store, which may be another checkout's.
const run = (args: string[], env: NodeJS.ProcessEnv = {}) => runKiln(data.dir, ['run', '--image', image.digest, ...args], env);
const caches = () => makeCacheStore(data.dir);
const sbin = { ...process.env, PATH: `${process.env.PATH}:/usr/sbin:/sbin` };
const MiB = 2 ** 20;

before(() => {
  image = ensureImage('amd64');
});
after(() => {
  assertNoLeaks(data.dir);
  data.cleanup();
});

describe('cache disks (minimal image)', () => {
  test('a file a trusted job writes to /cache is there in the next job; a read-only or failed job changes nothing', async () => {
    const first = await run(['--cache', 'kept', '--cache-size', '64M', '--', 'sh', '-c', 'mount | grep -c " /cache "; echo one > /cache/f']);
    assert.equal(first.code, 0, first.stderr.toString());
    assert.equal(first.stdout.toString(), '1\n');
    assert.match(first.stderr.toString(), /cache kept: saved as version/);
    // Warm starts are on (kiln run's default): the first job of this cache size builds the snapshot with its slot.
    assert.match(first.stderr.toString(), /building a warm-start snapshot/);
    assert.doesNotMatch(first.stderr.toString(), /cold start|warm start failed/);
    const v1 = caches().inspect('kept')!.current!;
    assert.match(v1.by ?? '', /^kiln run on /);
    assert.match(v1.jobId ?? '', /^run-/);

    const ro = await run(['--cache', 'kept', '--cache-readonly', '--', 'sh', '-c', 'cat /cache/f; echo two > /cache/f; cat /cache/f']);
    assert.equal(ro.code, 0, ro.stderr.toString());
    assert.equal(ro.stdout.toString(), 'one\ntwo\n', 'a read-only job reads the cache and may write its own copy');
    assert.doesNotMatch(ro.stderr.toString(), /saved as version/);
    assert.equal(caches().inspect('kept')!.current!.id, v1.id, 'a read-only job leaves the version as it was');

    const failed = await run(['--cache', 'kept', '--', 'sh', '-c', 'echo three > /cache/f; exit 3']);
    assert.equal(failed.code, 3);
    assert.match(failed.stderr.toString(), /not saved: the job failed \(exit 3\)/);

    const next = await run(['--cache', 'kept', '--', 'cat', '/cache/f']);
    assert.equal(next.code, 0, next.stderr.toString());
    assert.equal(next.stdout.toString(), 'one\n');
    assert.equal(caches().inspect('kept')!.versions.length, 1, 'the next job committed anew; old versions are collected');
  });

  test('cache jobs restore warm into the snapshot\'s cache slot: each sees its own cache, never the placeholder or another cache', async () => {
    const warmLine = /timings \(image [0-9a-f]+, warm start: restored from a snapshot\)/;
    // A trusted job writes a marker; the snapshot for 64M caches exists (the first test built it), so no build.
    const a1 = await run(['-v', '--cache', 'slot-a', '--cache-size', '64M', '--', 'sh', '-c', 'ls /cache; echo marker-a > /cache/marker']);
    assert.equal(a1.code, 0, a1.stderr.toString());
    assert.match(a1.stderr.toString(), warmLine);
    assert.doesNotMatch(a1.stderr.toString(), /building a warm-start snapshot/);
    assert.equal(a1.stdout.toString(), 'lost+found\n', 'a first use restores onto the empty file system');
    assert.match(a1.stderr.toString(), /cache slot-a: saved as version/);
    const b1 = await run(['-v', '--cache', 'slot-b', '--cache-size', '64M', '--', 'sh', '-c', 'echo marker-b > /cache/marker']);
    assert.equal(b1.code, 0, b1.stderr.toString());
    assert.match(b1.stderr.toString(), warmLine);

    // Two caches restored at once from the one snapshot: each reads its own committed version.
    const [a2, b2] = await Promise.all([
      run(['-v', '--cache', 'slot-a', '--', 'sh', '-c', 'cat /cache/marker; mount | grep -c " /cache "']),
      run(['-v', '--cache', 'slot-b', '--', 'sh', '-c', 'cat /cache/marker; mount | grep -c " /cache "']),
    ]);
    for (const r of [a2, b2]) {
      assert.equal(r.code, 0, r.stderr.toString());
      assert.match(r.stderr.toString(), warmLine);
    }
    assert.equal(a2.stdout.toString(), 'marker-a\n1\n');
    assert.equal(b2.stdout.toString(), 'marker-b\n1\n');
    const slotted = makeSnapshotStore(data.dir).list().filter((s) => s.key.cacheBytes !== undefined);
    assert.deepEqual(slotted.map((s) => s.key.cacheBytes), [64 * MiB], 'one snapshot with a 64M cache slot served every job');
    assert.match(slotted[0]!.key.devices, /blk:cache/);

    // A warm job's write-back commits a whole version the next warm job reads.
    const a3 = await run(['-v', '--cache', 'slot-a', '--', 'sh', '-c', 'cat /cache/marker; echo marker-a2 > /cache/marker; dd if=/dev/urandom of=/cache/blob bs=64k count=16 2>/dev/null']);
    assert.equal(a3.code, 0, a3.stderr.toString());
    assert.match(a3.stderr.toString(), warmLine);
    assert.equal(a3.stdout.toString(), 'marker-a\n');
    assert.match(a3.stderr.toString(), /cache slot-a: saved as version/);
    const v = caches().inspect('slot-a')!.current!.id;
    const raw = join(data.dir, 'caches', cacheId('slot-a'), 'versions', `${v}.raw`);
    assert.equal(spawnSync('e2fsck', ['-fn', raw], { env: sbin }).status, 0, 'the version a warm job wrote is a whole file system');
    const a4 = await run(['-v', '--cache', 'slot-a', '--cache-readonly', '--', 'sh', '-c', 'cat /cache/marker; wc -c < /cache/blob']);
    assert.equal(a4.code, 0, a4.stderr.toString());
    assert.match(a4.stderr.toString(), warmLine);
    assert.equal(a4.stdout.toString().replace(/ +/g, ''), 'marker-a2\n1048576\n');

    // Another cache size is another snapshot (its slot's size is part of the key); its jobs restore warm too.
    const c1 = await run(['-v', '--cache', 'slot-c', '--cache-size', '48M', '--', 'sh', '-c', 'df -k /cache | tail -1 | awk "{print \\$2}"']);
    assert.equal(c1.code, 0, c1.stderr.toString());
    assert.match(c1.stderr.toString(), /building a warm-start snapshot/);
    assert.match(c1.stderr.toString(), warmLine);
    const kib = Number(c1.stdout.toString().trim());
    // ext4's own metadata (journal, tables) takes part of the 48M; the 64M slot's file system would be over 48M.
    assert.ok(kib > 32 * 1024 && kib <= 48 * 1024, `the guest sees a ${kib} KiB file system, not a 48M one`);
    const sizes = makeSnapshotStore(data.dir).list().flatMap((s) => (s.key.cacheBytes !== undefined ? [s.key.cacheBytes] : [])).sort((x, y) => x - y);
    assert.deepEqual(sizes, [48 * MiB, 64 * MiB]);
  });

  test('a cache job whose snapshot QEMU refuses falls back to a cold boot with its cache; the next one restores warm again', async () => {
    const store = makeSnapshotStore(data.dir);
    const s = store.list().find((x) => x.key.cacheBytes === 64 * MiB)!;
    // Damage the device state under an unchanged stat record (bit rot): only QEMU notices, at the restore.
    damageSnapshotState(join(store.dir, s.id));

    const r = await run(['-v', '--cache', 'slot-a', '--', 'sh', '-c', 'cat /cache/marker; echo marker-a3 > /cache/marker']);
    assert.equal(r.code, 0, r.stderr.toString());
    assert.equal(r.stdout.toString(), 'marker-a2\n', "the cold boot after the failed restore mounted the job's own cache");
    assert.equal(r.stderr.toString().split('\n').filter((l) => /warm start failed/.test(l)).length, 1, r.stderr.toString());
    assert.match(r.stderr.toString(), /cold start: booted/);
    assert.match(r.stderr.toString(), /cache slot-a: saved as version/);
    const next = await run(['-v', '--cache', 'slot-a', '--', 'cat', '/cache/marker']);
    assert.equal(next.code, 0, next.stderr.toString());
    assert.match(next.stderr.toString(), /building a warm-start snapshot/);
    assert.match(next.stderr.toString(), /warm start: restored from a snapshot/);
    assert.equal(next.stdout.toString(), 'marker-a3\n');
  });

  test('two jobs writing one cache at once leave one whole version, written by one of them', async () => {
    const job = (who: string) => run(['--cache', 'race', '--cache-size', '64M', '--', 'sh', '-c', `for i in 1 2 3 4 5 6 7 8; do echo ${who} > /cache/f$i; done; dd if=/dev/urandom of=/cache/blob bs=64k count=32 2>/dev/null; echo ${who} > /cache/who`]);
    const [a, b] = await Promise.all([job('a'), job('b')]);
    for (const r of [a, b]) {
      assert.equal(r.code, 0, r.stderr.toString());
      assert.match(r.stderr.toString(), /cache race: saved as version/);
    }
    const info = caches().inspect('race')!;
    assert.equal(info.versions.length, 1);
    const raw = join(data.dir, 'caches', cacheId('race'), 'versions', `${info.current!.id}.raw`);
    assert.equal(spawnSync('e2fsck', ['-fn', raw], { env: sbin }).status, 0, 'the version is a whole file system');
    const check = await run(['--cache', 'race', '--cache-readonly', '--', 'sh', '-c', 'cat /cache/who /cache/f*']);
    const lines = check.stdout.toString().trim().split('\n');
    assert.equal(lines.length, 9);
    assert.equal(new Set(lines).size, 1, `every file from the same writer: ${lines.join(',')}`);
  });

  test('SIGKILL of kiln mid-commit leaves the previous version current and usable', async () => {
    const first = await run(['--cache', 'crash', '--cache-size', '64M', '--', 'sh', '-c', 'echo old > /cache/f']);
    assert.equal(first.code, 0, first.stderr.toString());
    const v1 = caches().inspect('crash')!.current!.id;
    // KILN_TEST_HOLD_CACHE_COMMIT: the commit stops after the new version is on disk, before the pointer moves.
    const p = spawn(process.execPath, kilnArgs(data.dir, ['run', '--cache', 'crash', '--', 'sh', '-c', 'echo new > /cache/f']), {
      env: { ...process.env, KILN_TEST_HOLD_CACHE_COMMIT: '1' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let err = '';
    await new Promise<void>((resolve, reject) => {
      p.stderr.on('data', (d: Buffer) => {
        err += d.toString();
        if (err.includes('holding the commit of cache crash')) resolve();
      });
      p.on('exit', (c) => reject(new Error(`kiln exited ${c} before the hold: ${err}`)));
    });
    const files = readdirSync(join(data.dir, 'caches', cacheId('crash'), 'versions'));
    assert.equal(files.filter((f) => f.endsWith('.raw')).length, 2, 'the new version was on disk when kiln died');
    p.kill('SIGKILL');
    await new Promise((r) => p.once('close', r));
    assert.equal(caches().inspect('crash')!.current!.id, v1);
    const next = await run(['--cache', 'crash', '--', 'cat', '/cache/f']);
    assert.equal(next.code, 0, next.stderr.toString());
    assert.equal(next.stdout.toString(), 'old\n');
    caches().collect();
    assert.equal(caches().inspect('crash')!.versions.length, 1, 'the killed commit\'s version is collected');
  });

  test('a full cache fails the job with a clear line; the host is untouched and nothing is saved', async () => {
    const r = await run(['--cache', 'full', '--cache-size', '32M', '--', 'sh', '-c', 'dd if=/dev/zero of=/cache/big bs=1M count=100 && echo wrote-all']);
    assert.notEqual(r.code, 0);
    assert.doesNotMatch(r.stdout.toString(), /wrote-all/);
    assert.match(r.stderr.toString(), /kiln: the cache at \/cache is full \(.*KiB, .*KiB free\): writes to it failed with No space left on device/);
    assert.match(r.stderr.toString(), /not saved: the job failed/);
    assert.equal(caches().inspect('full')!.current, undefined);
    // The 100 MB the job tried to write never reached the host: the cache keeps nothing of it, no lease is left.
    assert.ok(caches().inspect('full')!.bytes < 1024 * 1024, `the cache holds ${caches().inspect('full')!.bytes} bytes`);
    assert.deepEqual(readdirSync(join(data.dir, 'caches', cacheId('full'), 'leases')), []);
    const ok = await run(['--cache', 'full', '--', 'sh', '-c', 'df -k /cache | tail -1']);
    assert.equal(ok.code, 0, ok.stderr.toString());
  });

  test('eviction keeps the host budget: the least recently used cache goes', async () => {
    const fill = (key: string) => run(['--cache', key, '--cache-size', '32M', '--', 'dd', 'if=/dev/urandom', 'of=/cache/blob', 'bs=1M', 'count=6'], { KILN_CACHE_BUDGET: '16M' });
    for (const k of ['lru-a', 'lru-b', 'lru-c']) {
      const r = await fill(k);
      assert.equal(r.code, 0, r.stderr.toString());
    }
    const list = caches().list();
    const total = list.reduce((n, c) => n + c.bytes, 0);
    assert.ok(total <= 16 * 1024 * 1024, `caches take ${total} bytes, over the 16M budget`);
    const keys = list.map((c) => c.key);
    assert.ok(keys.includes('lru-c'), 'the newest cache stays');
    assert.ok(!keys.includes('kept'), 'older caches were evicted first');
  });
});
