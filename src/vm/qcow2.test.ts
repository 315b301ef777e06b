import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { qcow2VirtualSize } from './qcow2.ts';
import { createOverlay } from './disks.ts';

const hasQemuImg = spawnSync('qemu-img', ['--version']).status === 0;

test('overlays written in-process pass qemu-img check and chain to their backing file', { skip: !hasQemuImg && 'qemu-img is not installed (Debian package qemu-utils)' }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'kiln-qcow2-'));
  try {
    const base = join(dir, 'base.raw');
    writeFileSync(base, '');
    truncateSync(base, 3 * 1024 ** 3 + 512);
    const mid = join(dir, 'mid.qcow2');
    const top = join(dir, 'top.qcow2');
    await createOverlay(mid, base, 'raw', 10 * 1024 ** 3);
    await createOverlay(top, mid, 'qcow2');
    assert.equal(qcow2VirtualSize(top), 10 * 1024 ** 3, 'an overlay without a size takes its backing disk\'s');
    for (const f of [mid, top]) {
      const check = spawnSync('qemu-img', ['check', f], { encoding: 'utf8' });
      assert.equal(check.status, 0, check.stdout + check.stderr);
    }
    const info = JSON.parse(spawnSync('qemu-img', ['info', '--backing-chain', '--output=json', top], { encoding: 'utf8' }).stdout) as {
      'virtual-size': number;
      'backing-filename'?: string;
      'backing-filename-format'?: string;
    }[];
    assert.deepEqual(
      info.map((i) => [i['virtual-size'], i['backing-filename'], i['backing-filename-format']]),
      [
        [10 * 1024 ** 3, mid, 'qcow2'],
        [10 * 1024 ** 3, base, 'raw'],
        [3 * 1024 ** 3 + 512, undefined, undefined],
      ],
    );
    // Data written through the top overlay lands there, never in what is below it.
    const w = spawnSync('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x5a 1G 64k', top], { encoding: 'utf8' });
    assert.equal(w.status, 0, w.stderr);
    const r = spawnSync('qemu-io', ['-f', 'qcow2', '-c', 'read -P 0x5a 1G 64k', top], { encoding: 'utf8' });
    assert.match(r.stdout, /read 65536\/65536 bytes/);
    assert.doesNotMatch(r.stdout, /Pattern verification failed/);
    const below = spawnSync('qemu-io', ['-f', 'qcow2', '-c', 'read -P 0 1G 64k', mid], { encoding: 'utf8' });
    assert.doesNotMatch(below.stdout, /Pattern verification failed/);
    await assert.rejects(createOverlay(join(dir, 'x.qcow2'), join(dir, 'missing.raw'), 'raw'), /missing/);
    await assert.rejects(createOverlay(top, mid, 'qcow2'), /EEXIST/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
