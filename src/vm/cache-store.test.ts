import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cacheId, imageDigest, makeCacheStore, nonZeroBlocks, validateCacheKey, type CacheLease } from './cache-store.ts';

const MiB = 1024 * 1024;

function withDir(fn: (dir: string) => Promise<void> | void) {
  return async () => {
    const dir = mkdtempSync(join(tmpdir(), 'kiln-cache-'));
    try {
      await fn(dir);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  };
}

function sh(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', env: { ...process.env, PATH: `${process.env.PATH}:/usr/sbin:/sbin` } });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

/**
 * What a guest does to the overlay, done on the host with e2fsprogs and qemu-img: the lease's base copied,
 * a file written into it (debugfs), and the difference written as the lease's overlay (qemu-img convert -B).
 */
function writeThroughOverlay(lease: CacheLease, dir: string, name: string, content: string): void {
  const ldir = join(lease.overlayPath, '..');
  const work = join(dir, `work-${Math.random().toString(36).slice(2)}.raw`);
  sh('cp', ['--sparse=always', join(ldir, 'base.raw'), work]);
  sh('chmod', ['0644', work]);
  const src = join(dir, `src-${name}`);
  writeFileSync(src, content);
  const cmds = join(dir, `cmds-${name}`);
  writeFileSync(cmds, `rm ${name}\nwrite ${src} ${name}\n`);
  sh('debugfs', ['-w', '-f', cmds, work]);
  rmSync(lease.overlayPath);
  sh('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', '-B', join(ldir, 'base.raw'), '-F', 'raw', work, lease.overlayPath]);
  rmSync(work);
}

function readFromVersion(store: ReturnType<typeof makeCacheStore>, key: string, name: string): string | undefined {
  const i = store.inspect(key);
  if (!i?.current) return undefined;
  const raw = join(store.dir, cacheId(key), 'versions', `${i.current.id}.raw`);
  const r = spawnSync('debugfs', ['-R', `cat ${name}`, raw], { encoding: 'utf8', env: { ...process.env, PATH: `${process.env.PATH}:/usr/sbin:/sbin` } });
  return r.stdout === '' ? undefined : r.stdout;
}

test('cache keys: repository names and simple words pass; paths out, spaces and empties are refused', () => {
  for (const k of ['owner/repo', 'deps-v1', 'a', 'x.y_z']) validateCacheKey(k);
  for (const k of ['', '../x', 'a b', '/abs', 'a/../b', 'x'.repeat(201), '-x']) assert.throws(() => validateCacheKey(k), /is not valid/);
});

test('a first lease is a miss on an empty file system; a committed version is the next lease\'s base, with its writer', withDir(async (dir) => {
  const store = makeCacheStore(dir);
  const a = await store.open('o/r', { sizeBytes: 32 * MiB, jobId: 'j1' });
  assert.equal(a.hit, false);
  writeThroughOverlay(a, dir, 'hello.txt', 'from job 1\n');
  const v = await a.commit({ jobId: 'j1', ref: 'refs/heads/main', commit: 'abc123' });
  a.release();
  assert.equal(readFromVersion(store, 'o/r', 'hello.txt'), 'from job 1\n');
  const i = store.inspect('o/r')!;
  assert.equal(i.current?.id, v.id);
  assert.equal(i.current?.jobId, 'j1');
  assert.equal(i.current?.ref, 'refs/heads/main');
  assert.equal(i.current?.commit, 'abc123');
  assert.equal(i.sizeBytes, 32 * MiB);
  assert.equal(i.inUse, 0);
  const b = await store.open('o/r', { jobId: 'j2' });
  assert.equal(b.hit, true);
  assert.equal(b.version, v.id);
  b.release(); // not committed: the version stays as it was
  assert.equal(store.inspect('o/r')?.current?.id, v.id);
  assert.equal(store.counters.hits, 1);
  assert.equal(store.counters.misses, 1);
}));

test('readers of an old version keep it while a newer one is committed; it goes once they are done', withDir(async (dir) => {
  const store = makeCacheStore(dir);
  const w1 = await store.open('k', { sizeBytes: 32 * MiB, jobId: 'w1' });
  writeThroughOverlay(w1, dir, 'f', 'one');
  const v1 = await w1.commit({ jobId: 'w1' });
  w1.release();
  const reader = await store.open('k', { jobId: 'r' });
  const w2 = await store.open('k', { jobId: 'w2' });
  writeThroughOverlay(w2, dir, 'f', 'two');
  const v2 = await w2.commit({ jobId: 'w2' });
  w2.release();
  const versions = readdirSync(join(store.dir, cacheId('k'), 'versions'));
  assert.ok(versions.includes(`${v1.id}.raw`), 'the reader still holds v1');
  // The reader's base is the v1 data, whatever happens to the version directory.
  assert.match(sh('debugfs', ['-R', 'cat f', join(reader.overlayPath, '..', 'base.raw')]), /one/);
  reader.release();
  const after = readdirSync(join(store.dir, cacheId('k'), 'versions'));
  assert.deepEqual(after.sort(), [`${v2.id}.json`, `${v2.id}.raw`]);
  assert.equal(readFromVersion(store, 'k', 'f'), 'two');
}));

test('two concurrent writers: both commit whole versions, the last committed is current', withDir(async (dir) => {
  const store = makeCacheStore(dir);
  const a = await store.open('k', { sizeBytes: 32 * MiB, jobId: 'a' });
  const b = await store.open('k', { jobId: 'b' });
  writeThroughOverlay(a, dir, 'who', 'a');
  writeThroughOverlay(b, dir, 'who', 'b');
  const [va, vb] = await Promise.all([a.commit({ jobId: 'a' }), b.commit({ jobId: 'b' })]);
  a.release();
  b.release();
  const cur = store.inspect('k')!.current!;
  assert.ok(cur.id === va.id || cur.id === vb.id);
  const want = cur.id === va.id ? 'a' : 'b';
  assert.equal(readFromVersion(store, 'k', 'who'), want);
  const raw = join(store.dir, cacheId('k'), 'versions', `${cur.id}.raw`);
  assert.equal(spawnSync('e2fsck', ['-fn', raw], { env: { ...process.env, PATH: `${process.env.PATH}:/usr/sbin:/sbin` } }).status, 0, 'the current version is a whole file system');
  assert.equal(store.inspect('k')!.versions.length, 1, 'the older commit is collected');
}));

test('SIGKILL between the new version and the pointer leaves the previous version current and usable', withDir(async (dir) => {
  const store = makeCacheStore(dir);
  const w1 = await store.open('k', { sizeBytes: 32 * MiB, jobId: 'w1' });
  writeThroughOverlay(w1, dir, 'f', 'old');
  const v1 = await w1.commit({ jobId: 'w1' });
  w1.release();
  // A child process takes a lease, writes, and commits with the test hook holding it before the pointer's rename.
  const script = join(dir, 'child.mts');
  writeFileSync(
    script,
    `import { makeCacheStore } from ${JSON.stringify(join(import.meta.dirname, 'cache-store.ts'))};
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { rmSync, writeFileSync } from 'node:fs';
const dir = ${JSON.stringify(dir)};
const store = makeCacheStore(dir, { beforePointer: async () => { process.stdout.write('HOLDING\\n'); await new Promise(() => undefined); } });
const l = await store.open('k', { jobId: 'w2' });
const env = { ...process.env, PATH: process.env.PATH + ':/usr/sbin:/sbin' };
const ldir = join(l.overlayPath, '..');
const work = join(dir, 'child.raw');
spawnSync('cp', ['--sparse=always', join(ldir, 'base.raw'), work]);
spawnSync('chmod', ['0644', work]);
writeFileSync(join(dir, 'src'), 'new');
spawnSync('debugfs', ['-w', '-R', 'write ' + join(dir, 'src') + ' f', work], { env });
rmSync(l.overlayPath);
spawnSync('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', '-B', join(ldir, 'base.raw'), '-F', 'raw', work, l.overlayPath]);
process.stdout.write('COMMITTING\\n');
await l.commit({ jobId: 'w2' });
`,
  );
  const child = spawn(process.execPath, ['--import', 'tsx', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  await new Promise<void>((resolve, reject) => {
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('HOLDING')) resolve();
    });
    child.on('exit', (c) => reject(new Error(`child exited ${c} before the hold: ${out}`)));
  });
  const versionsDuring = readdirSync(join(store.dir, cacheId('k'), 'versions')).filter((f) => f.endsWith('.raw'));
  assert.equal(versionsDuring.length, 2, 'the new version is on disk, the pointer not yet moved');
  child.kill('SIGKILL');
  await new Promise((r) => child.once('exit', r));
  assert.equal(store.inspect('k')?.current?.id, v1.id);
  assert.equal(readFromVersion(store, 'k', 'f'), 'old');
  const next = await store.open('k', { jobId: 'r' });
  assert.equal(next.version, v1.id);
  next.release();
  store.collect();
  const left = readdirSync(join(store.dir, cacheId('k'), 'versions'));
  assert.deepEqual(left.sort(), [`${v1.id}.json`, `${v1.id}.raw`], 'the killed commit\'s files are collected');
  assert.deepEqual(readdirSync(join(store.dir, cacheId('k'), 'leases')), [], 'the dead lease is collected');
}));

test('eviction keeps the host budget, least recently used first, never a cache in use', withDir(async (dir) => {
  const fill = async (store: ReturnType<typeof makeCacheStore>, key: string) => {
    const l = await store.open(key, { sizeBytes: 32 * MiB, jobId: key });
    writeThroughOverlay(l, dir, 'blob', 'x'.repeat(2 * MiB));
    await l.commit({ jobId: key });
    l.release();
  };
  const probe = makeCacheStore(join(dir, 'probe'));
  await fill(probe, 'p');
  const one = probe.inspect('p')!.bytes;
  const store = makeCacheStore(dir, { budgetBytes: Math.floor(one * 2.5) });
  for (const k of ['a', 'b', 'c']) await fill(store, k);
  const old = new Date(Date.now() - 3_600_000);
  utimesSync(join(store.dir, cacheId('a'), 'used'), old, old);
  const inUse = await store.open('a', { jobId: 'holder' }); // a is in use: b goes instead, though a is older
  utimesSync(join(store.dir, cacheId('a'), 'used'), old, new Date(Date.now() - 3_600_000));
  utimesSync(join(store.dir, cacheId('b'), 'used'), new Date(Date.now() - 1_800_000), new Date(Date.now() - 1_800_000));
  assert.deepEqual(store.collect(), ['b']);
  inUse.release();
  assert.deepEqual(store.list().map((c) => c.key).sort(), ['a', 'c']);
  assert.ok(store.list().reduce((n, c) => n + c.bytes, 0) <= Math.floor(one * 2.5));
  assert.equal(store.counters.evictions, 1);
}));

test('retention: a cache unused longer than maxIdleMs goes at the next collection, under budget or not; one in use stays', withDir(async (dir) => {
  const store = makeCacheStore(dir, { maxIdleMs: 3_600_000 });
  for (const k of ['stale', 'busy', 'fresh']) {
    const l = await store.open(k, { sizeBytes: 32 * MiB, jobId: k });
    writeThroughOverlay(l, dir, 'f', k);
    await l.commit({ jobId: k });
    l.release();
  }
  const old = new Date(Date.now() - 2 * 3_600_000);
  utimesSync(join(store.dir, cacheId('stale'), 'used'), old, old);
  const holder = await store.open('busy', { jobId: 'holder' });
  utimesSync(join(store.dir, cacheId('busy'), 'used'), old, old);
  assert.deepEqual(store.collect(), ['stale'], 'the stale cache goes though the store is far under its budget');
  assert.deepEqual(store.list().map((c) => c.key).sort(), ['busy', 'fresh']);
  holder.release();
  utimesSync(join(store.dir, cacheId('busy'), 'used'), old, old);
  assert.deepEqual(store.collect(), ['busy'], 'once no job uses it, it goes too');
  assert.equal(store.counters.evictions, 2);
  // Without a retention, age alone removes nothing.
  const keep = makeCacheStore(join(dir, 'keep'));
  const l = await keep.open('old', { sizeBytes: 32 * MiB, jobId: 'old' });
  await l.commit({ jobId: 'old' });
  l.release();
  utimesSync(join(keep.dir, cacheId('old'), 'used'), old, old);
  assert.deepEqual(keep.collect(), []);
}));

test('rm removes a cache; a job using it keeps its copy until it ends', withDir(async (dir) => {
  const store = makeCacheStore(dir);
  const w = await store.open('k', { sizeBytes: 32 * MiB, jobId: 'w' });
  writeThroughOverlay(w, dir, 'f', 'data');
  await w.commit({ jobId: 'w' });
  w.release();
  assert.equal(store.remove('k'), true);
  assert.equal(store.inspect('k'), undefined);
  assert.equal(store.remove('k'), false);
  assert.equal(existsSync(join(store.dir, cacheId('k'))), false);
  const empty = readFileSync(join(dir, 'cache', 'disks', `cache-ext4-nojournal-${32 * MiB}.raw`));
  assert.match(empty.subarray(0x438, 0x43a).toString('hex'), /53ef/, 'the shared empty base is an ext4 image');
  // Superblock at 0x400, s_feature_compat at +0x5c: has_journal (0x4) is not set (a job's writes go to a throwaway overlay).
  assert.equal(empty.readUInt32LE(0x45c) & 0x4, 0, 'the empty base has no journal');
}));

/** Sends a version from one store to another the way the agents do: its non-zero blocks, in order. */
async function copyVersion(from: ReturnType<typeof makeCacheStore>, to: ReturnType<typeof makeCacheStore>, key: string, v: string, o: { corrupt?: boolean; stopAfter?: number } = {}) {
  const held = from.holdVersion(key, v);
  assert.ok(held);
  const r = to.receiveVersion(key, { version: v, length: held.length, sha256: held.record.sha256!, record: held.record, from: 'peer' });
  let n = 0;
  try {
    for await (const b of nonZeroBlocks(held.path)) {
      if (o.stopAfter !== undefined && n >= o.stopAfter) return { r, held, n };
      if (o.corrupt && n === 1) b.data[100] = b.data[100]! ^ 0xff;
      await r.write(b.offset, b.data);
      n++;
    }
    return { r, held, n, version: await r.finish() };
  } finally {
    held.release();
  }
}

void test('a committed version sent to another store arrives whole (same bytes, record and checksum), or not at all', withDir(async (dir) => {
  const a = makeCacheStore(join(dir, 'a'));
  const b = makeCacheStore(join(dir, 'b'));
  const lease = await a.open('t/deps', { sizeBytes: 32 * MiB, jobId: '7' });
  writeThroughOverlay(lease, dir, 'f', 'hello from a');
  const v = await lease.commit({ jobId: '7', by: 'test' });
  lease.release();
  assert.match(v.sha256 ?? '', /^[0-9a-f]{64}$/);
  const fileA = join(dir, 'a', 'caches', cacheId('t/deps'), 'versions', `${v.id}.raw`);
  assert.equal(await imageDigest(fileA), v.sha256, 'the recorded checksum is the image\'s');

  // Corrupted on the way: refused, nothing visible, no leftovers.
  await assert.rejects(copyVersion(a, b, 't/deps', v.id, { corrupt: true }), (e: Error & { code?: string }) => e.code === 'cache.checksum');
  assert.equal(b.inspect('t/deps'), undefined);
  assert.deepEqual(readdirSync(join(dir, 'b', 'caches', cacheId('t/deps'), 'versions')), []);
  assert.deepEqual(readdirSync(join(dir, 'b', 'caches', cacheId('t/deps'), 'leases')), []);

  // Whole: the same bytes, the same record, current on b, and a lease on it reads it.
  const { version } = await copyVersion(a, b, 't/deps', v.id);
  assert.equal(version?.id, v.id);
  const fileB = join(dir, 'b', 'caches', cacheId('t/deps'), 'versions', `${v.id}.raw`);
  assert.ok(readFileSync(fileA).equals(readFileSync(fileB)));
  const got = b.inspect('t/deps')!.current!;
  assert.deepEqual([got.jobId, got.by, got.sha256, got.createdAt, got.fetchedFrom], ['7', 'test', v.sha256, v.createdAt, 'peer']);
  assert.ok(statSync(fileB).blocks * 512 < 32 * MiB / 2, 'the copy is sparse');
  const l2 = await b.open('t/deps', { jobId: '8' });
  assert.equal(l2.version, v.id);
  l2.release();
}));

void test('a receive whose process died leaves nothing visible, and the collector removes what it wrote', withDir(async (dir) => {
  const a = makeCacheStore(join(dir, 'a'));
  const b = makeCacheStore(join(dir, 'b'));
  const lease = await a.open('t/deps', { sizeBytes: 32 * MiB, jobId: '7' });
  writeThroughOverlay(lease, dir, 'f', 'x'.repeat(3 * MiB));
  const v = await lease.commit({ jobId: '7' });
  lease.release();
  const { n } = await copyVersion(a, b, 't/deps', v.id, { stopAfter: 2 });
  assert.equal(n, 2);
  const leases = join(dir, 'b', 'caches', cacheId('t/deps'), 'leases');
  const [l] = readdirSync(leases);
  assert.ok(l && existsSync(join(leases, l, 'fetch.raw')), 'the partial copy is in a lease');
  assert.equal(b.inspect('t/deps'), undefined, 'nothing of it is a version');
  // The receiving process dies (its lease's owner is a process that has exited).
  const dead = spawnSync('true');
  const owner = JSON.parse(readFileSync(join(leases, l, 'owner.json'), 'utf8')) as Record<string, unknown>;
  writeFileSync(join(leases, l, 'owner.json'), JSON.stringify({ ...owner, pid: dead.pid }));
  b.collect();
  assert.deepEqual(readdirSync(leases), []);
  assert.deepEqual(readdirSync(join(dir, 'b', 'caches', cacheId('t/deps'), 'versions')), []);
}));

void test('holdVersion keeps a version a collector would delete, until released', withDir(async (dir) => {
  const a = makeCacheStore(join(dir, 'a'));
  const commit = async (text: string) => {
    const l = await a.open('t/k', { sizeBytes: 16 * MiB, jobId: '1' });
    writeThroughOverlay(l, dir, 'f', text);
    const v = await l.commit({ jobId: '1' });
    l.release();
    return v;
  };
  const v1 = await commit('one');
  const held = a.holdVersion('t/k', v1.id)!;
  await commit('two');
  a.collect();
  assert.ok(existsSync(held.path));
  assert.ok(existsSync(join(dir, 'a', 'caches', cacheId('t/k'), 'versions', `${v1.id}.raw`)), 'kept while held');
  held.release();
  a.collect();
  assert.equal(existsSync(join(dir, 'a', 'caches', cacheId('t/k'), 'versions', `${v1.id}.raw`)), false);
  assert.equal(a.holdVersion('t/k', v1.id), undefined, 'gone');
  assert.equal(a.holdVersion('t/k', '../x'), undefined);
}));
