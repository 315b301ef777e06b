import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readlinkSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readCpio, writeCpio, type CpioEntry } from './cpio.ts';

const entries: CpioEntry[] = [
  { type: 'dir', path: 'bin' },
  { type: 'file', path: 'bin/hello', data: Buffer.from([0, 1, 2, 255, 10]), mode: 0o755 },
  { type: 'symlink', path: 'bin/hi', target: 'hello' },
  { type: 'dir', path: 'dev' },
  { type: 'chardev', path: 'dev/console', major: 5, minor: 1 },
  { type: 'file', path: 'etc/ünïcode name', data: Buffer.from('x'.repeat(1001)) },
  { type: 'dir', path: 'etc' },
];

test('same entries in any order give the same bytes', () => {
  const a = writeCpio(entries);
  const b = writeCpio([...entries].reverse());
  assert.ok(a.equals(b));
});

test('round-trips through our reader', () => {
  const back = readCpio(writeCpio(entries));
  assert.deepEqual(back.map((e) => e.path), ['bin', 'bin/hello', 'bin/hi', 'dev', 'dev/console', 'etc', 'etc/ünïcode name']);
  assert.deepEqual([...(back[1]?.data ?? [])], [0, 1, 2, 255, 10]);
  assert.equal(back[4]?.rdev.join(':'), '5:1');
});

test('GNU cpio, an independent reader, extracts what we wrote', { skip: process.getuid?.() !== 0 && 'needs root for device nodes' }, () => {
  const dir = mkdtempSync(join(tmpdir(), 'kiln-cpio-'));
  try {
    writeFileSync(join(dir, 'a.cpio'), writeCpio(entries));
    const r = spawnSync('sh', ['-c', 'mkdir out && cd out && cpio -id --quiet < ../a.cpio'], { cwd: dir, encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual([...readFileSync(join(dir, 'out/bin/hello'))], [0, 1, 2, 255, 10]);
    assert.equal(statSync(join(dir, 'out/bin/hello')).mode & 0o777, 0o755);
    assert.equal(readlinkSync(join(dir, 'out/bin/hi')), 'hello');
    assert.equal(readFileSync(join(dir, 'out/etc/ünïcode name'), 'utf8').length, 1001);
    assert.ok(statSync(join(dir, 'out/dev/console')).isCharacterDevice());
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('rejects paths that escape or repeat', () => {
  assert.throws(() => writeCpio([{ type: 'dir', path: '../x' }]), /bad path/);
  assert.throws(() => writeCpio([{ type: 'dir', path: 'a' }, { type: 'dir', path: '/a/' }]), /duplicate/);
});
