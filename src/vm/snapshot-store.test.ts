import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cloneFixBinary } from '../image/guest-helper.ts';
import { checkSealed, seal } from './seal.ts';
import { makeSnapshotStore, type SnapshotKey } from './snapshot-store.ts';
import { identityLines } from './snapshot-template.ts';

const key = (over: Partial<SnapshotKey> = {}): SnapshotKey => ({
  image: `sha256:${'a'.repeat(64)}`,
  arch: 'amd64',
  cpus: 1,
  memoryBytes: 512 * 1024 * 1024,
  diskBytes: 10 * 1024 ** 3,
  devices: 'x',
  qemu: 'QEMU emulator version 7.2.22',
  init: 2,
  accel: 'tcg',
  ...over,
});

function withDir(fn: (dir: string) => Promise<void> | void) {
  return async () => {
    const dir = mkdtempSync(join(tmpdir(), 'kiln-snap-'));
    try {
      await fn(dir);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  };
}

async function addSnapshot(store: ReturnType<typeof makeSnapshotStore>, k: SnapshotKey, ramBytes = 4096) {
  const s = store.staging();
  writeFileSync(join(s, 'ram'), Buffer.alloc(ramBytes, 1));
  writeFileSync(join(s, 'state'), 'state');
  writeFileSync(join(s, 'scratch.qcow2'), 'disk');
  return store.commit(s, k, 10);
}

test('every key field gives a different snapshot id', () => {
  const store = makeSnapshotStore('/nonexistent');
  const ids = new Set([
    key(),
    key({ image: `sha256:${'b'.repeat(64)}` }),
    key({ arch: 'arm64' }),
    key({ cpus: 2 }),
    key({ memoryBytes: 1 }),
    key({ diskBytes: 1 }),
    key({ devices: 'y' }),
    key({ qemu: 'QEMU emulator version 8.0' }),
    key({ init: 3 }),
    key({ accel: 'kvm' }),
    key({ accel: 'kvm', hostCpu: 'x' }),
  ].map((k) => store.idOf(k)));
  assert.equal(ids.size, 11);
});

test('a committed snapshot is found; its files are sealed (mode, record); the directory is private', withDir(async (dir) => {
  const store = makeSnapshotStore(dir);
  assert.deepEqual(store.find(key()), { missing: true });
  const r = await addSnapshot(store, key());
  const f = store.find(key());
  assert.ok('snap' in f, JSON.stringify(f));
  assert.equal(f.snap.id, r.id);
  assert.equal(f.snap.files.state!.mode, 0o400);
  assert.equal(f.snap.files.ram!.mode, 0o600);
  assert.match(f.snap.files.state!.sha256, /^[0-9a-f]{64}$/);
  assert.equal(spawnSync('stat', ['-c', '%a', store.dir]).stdout.toString().trim(), '700');
}));

test('a changed, replaced, chmodded or missing file is a problem: the snapshot is dropped', withDir(async (dir) => {
  const store = makeSnapshotStore(dir);
  const cases: [string, (d: string) => void, RegExp][] = [
    ['rewritten', (d) => (chmodSync(join(d, 'state'), 0o600), writeFileSync(join(d, 'state'), 'other')), /state was modified|state has mode/],
    ['grown', (d) => (chmodSync(join(d, 'state'), 0o600), writeFileSync(join(d, 'state'), 'longer state')), /changed size/],
    ['touched back', (d) => utimesSync(join(d, 'scratch.qcow2'), new Date(0), new Date(0)), /scratch.qcow2 was modified/],
    ['chmod', (d) => chmodSync(join(d, 'state'), 0o644), /state (was modified|has mode)/],
    ['missing', (d) => rmSync(join(d, 'ram')), /ram is missing/],
    ['meta', (d) => writeFileSync(join(d, 'meta.json'), '{'), /meta.json/],
  ];
  for (const [name, damage, why] of cases) {
    const r = await addSnapshot(store, key());
    damage(join(store.dir, r.id));
    const f = store.find(key());
    assert.ok('problem' in f, `${name}: ${JSON.stringify(f)}`);
    assert.match(f.problem, why, name);
    assert.equal(existsSync(join(store.dir, r.id)), false, `${name}: dropped`);
  }
}));

test('verifyAll hashes again and removes a snapshot whose content changed under the same stat record', withDir(async (dir) => {
  const store = makeSnapshotStore(dir);
  const good = await addSnapshot(store, key());
  const bad = await addSnapshot(store, key({ cpus: 2 }));
  // Rewrite a file and then its record, as if bits rotted without any stat change.
  const d = join(store.dir, bad.id);
  chmodSync(join(d, 'state'), 0o600);
  writeFileSync(join(d, 'state'), 'STATE');
  chmodSync(join(d, 'state'), 0o400);
  const { statSync, readFileSync } = await import('node:fs');
  const meta = JSON.parse(readFileSync(join(d, 'meta.json'), 'utf8')) as { files: Record<string, Record<string, number>> };
  const st = statSync(join(d, 'state'));
  Object.assign(meta.files.state!, { ino: st.ino, mtimeMs: st.mtimeMs, ctimeMs: st.ctimeMs });
  writeFileSync(join(d, 'meta.json'), JSON.stringify(meta));
  assert.ok('snap' in store.find(key({ cpus: 2 })), 'the cheap check cannot see it');
  const r = await store.verifyAll();
  assert.deepEqual(r.ok, [good.id]);
  assert.deepEqual(r.removed.map((x) => x.id), [bad.id]);
  assert.match(r.removed[0]!.why, /state does not match/);
}));

test('the store stays under its budget, least recently used first, never the newest', withDir(async (dir) => {
  const store = makeSnapshotStore(dir, { budgetBytes: 3 * 64 * 1024 });
  const a = await addSnapshot(store, key({ cpus: 1 }), 60 * 1024);
  const b = await addSnapshot(store, key({ cpus: 2 }), 60 * 1024);
  store.markUsed(a.id);
  utimesSync(join(store.dir, b.id, 'used'), new Date(1000), new Date(1000));
  const c = await addSnapshot(store, key({ cpus: 3 }), 60 * 1024);
  const ids = store.list().map((s) => s.id);
  assert.ok(ids.includes(c.id) && ids.includes(a.id), 'the newest and the recently used stay');
  assert.ok(!ids.includes(b.id), 'the least recently used went');
  assert.deepEqual(store.removeForImage(key().image).sort(), [a.id, c.id].sort());
  assert.equal(store.list().length, 0);
}));

test('one builder per key: a live owner holds the lock; a dead owner\'s lock and staging are swept', withDir(async (dir) => {
  const store = makeSnapshotStore(dir);
  const release = store.lockBuild(key());
  assert.ok(release);
  assert.equal(store.lockBuild(key()), undefined);
  assert.ok(store.lockBuild(key({ cpus: 2 })), 'another key is free');
  release();
  assert.ok(store.lockBuild(key()), 'released');
  // A dead process's leftovers.
  const dead = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))']).stdout.toString();
  const stale = join(store.dir, `.build-${dead}-x`);
  mkdirSync(stale);
  writeFileSync(join(stale, 'owner.json'), JSON.stringify({ pid: Number(dead), start: 1 }));
  writeFileSync(join(store.dir, `.lock-${store.idOf(key({ cpus: 9 }))}`), JSON.stringify({ pid: Number(dead), start: 1 }));
  store.sweep();
  assert.deepEqual(readdirSync(store.dir).filter((e) => e.includes(dead)), []);
  assert.ok(store.lockBuild(key({ cpus: 9 })), 'the dead owner\'s lock is gone');
}));

test('seals: a stat match skips the hash; any change is hashed again', withDir(async (dir) => {
  const f = join(dir, 'vmlinuz');
  writeFileSync(f, 'kernel');
  const sha = (await import('node:crypto')).createHash('sha256').update('kernel').digest('hex');
  assert.equal(await checkSealed(f, sha), true);
  assert.equal(await checkSealed(f, 'f'.repeat(64)), false, 'a wrong digest never passes on a seal');
  seal(f, sha);
  writeFileSync(f, 'kernel');
  assert.equal(await checkSealed(f, sha), true, 'same content after a write: hashed, still good');
  writeFileSync(f, 'KERNEL');
  assert.equal(await checkSealed(f, sha), false);
  await assert.rejects(checkSealed(join(dir, 'missing'), sha));
}));

test('identity lines: fresh seed and machine-id each time, the clock as a timespec, a valid hostname, SYNC last', () => {
  const a = identityLines('run-AB_12', {}, () => 1_700_000_000_250.5);
  const b = identityLines('run-AB_12', {}, () => 1_700_000_000_250.5);
  const lines = a.trim().split('\n');
  assert.deepEqual(lines.map((l) => l.split(' ')[0]), ['SEED', 'CLOCK', 'HOST', 'MID', 'SYNC']);
  assert.equal(Buffer.from(lines[0]!.split(' ')[1]!, 'base64').length, 64);
  assert.notEqual(a.split('\n')[0], b.split('\n')[0]);
  assert.notEqual(a.split('\n')[3], b.split('\n')[3]);
  const clock = Buffer.from(lines[1]!.split(' ')[1]!, 'base64');
  assert.equal(clock.readBigInt64LE(0), 1_700_000_000n);
  assert.equal(clock.readBigInt64LE(8), 250_500_000n);
  assert.equal(Buffer.from(lines[2]!.split(' ')[1]!, 'base64').toString(), 'kiln-run-ab-12');
  assert.match(lines[3]!, /^MID [0-9a-f]{32}$/);
});

test('identity lines carry the per-VM settings a cold boot reads from the kernel command line, before SYNC', () => {
  const lines = identityLines('vm1', { registryMirror: '10.0.2.100:5000' }).trim().split('\n');
  assert.deepEqual(lines.map((l) => l.split(' ')[0]), ['SEED', 'CLOCK', 'HOST', 'MID', 'MIRROR', 'SYNC']);
  assert.equal(Buffer.from(lines[4]!.split(' ')[1]!, 'base64').toString(), '10.0.2.100:5000');
  // Mirrors of other registries: one MIRRORS line, the kernel command line's words (kiln.mirror.<registry>=<address>) without the prefix.
  const more = identityLines('vm1', { registryMirror: '10.0.2.100:5000', registryMirrors: [{ registry: 'ghcr.io', address: '10.0.2.101:5000' }, { registry: 'quay.io', address: '10.0.2.102:5000' }] }).trim().split('\n');
  assert.deepEqual(more.map((l) => l.split(' ')[0]), ['SEED', 'CLOCK', 'HOST', 'MID', 'MIRROR', 'MIRRORS', 'SYNC']);
  assert.equal(Buffer.from(more[5]!.split(' ')[1]!, 'base64').toString(), 'ghcr.io=10.0.2.101:5000 quay.io=10.0.2.102:5000');
  assert.deepEqual(identityLines('vm1', { registryMirrors: [] }).trim().split('\n').map((l) => l.split(' ')[0]), ['SEED', 'CLOCK', 'HOST', 'MID', 'SYNC']);
});

test('kiln-clone-fix is a valid static ELF for both guests; on this host it reseeds (root) and sets no clock without input', () => {
  for (const [arch, machine] of [['amd64', 62], ['arm64', 183]] as const) {
    const elf = cloneFixBinary(arch);
    assert.equal(elf.toString('latin1', 0, 4), '\x7fELF');
    assert.equal(elf.readUInt16LE(18), machine);
    assert.equal(Number(elf.readBigUInt64LE(64 + 32)), elf.length, 'one segment covers the file');
  }
  if (process.arch !== 'x64' || process.getuid?.() !== 0) return;
  const dir = mkdtempSync(join(tmpdir(), 'kiln-cf-'));
  try {
    const bin = join(dir, 'kiln-clone-fix');
    writeFileSync(bin, cloneFixBinary('amd64'), { mode: 0o755 });
    // Empty stdin: no clock to set (this is the host's clock); the reseed ioctl itself must work.
    const r = spawnSync(bin, [], { input: '' });
    assert.equal(r.status, 0);
    // As an unprivileged user both steps fail, and the status says so.
    const u = spawnSync('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', bin], { input: Buffer.alloc(16) });
    assert.notEqual(u.status, 0);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
