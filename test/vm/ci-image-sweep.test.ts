/**
 * An interrupted ci image build leaves its build directory, possibly with debootstrap's mounts inside; the
 * next build unmounts and removes it, and leaves live builds alone. Real mounts (CI runs as root).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { sweepStaleBuilds } from '../../src/image/build-ci.ts';

test('stale ci build directories are unmounted and removed; live ones stay', async () => {
  const cache = mkdtempSync(join(tmpdir(), 'kiln-sweep-'));
  const mounted = join(cache, 'build-ci-dead', 'root', 'proc');
  try {
    mkdirSync(mounted, { recursive: true });
    mkdirSync(join(cache, 'build-ci-live', 'root'), { recursive: true });
    // A pid that is not running: the highest pid the kernel could hand out, plus one.
    const deadPid = Number(readFileSync('/proc/sys/kernel/pid_max', 'utf8')) + 1;
    writeFileSync(join(cache, 'build-ci-dead', 'owner.pid'), String(deadPid));
    writeFileSync(join(cache, 'build-ci-live', 'owner.pid'), String(process.pid));
    assert.equal(spawnSync('mount', ['-t', 'tmpfs', 'tmpfs', mounted]).status, 0, 'mount a tmpfs as debootstrap mounts /proc');
    const lines: string[] = [];
    const removed = await sweepStaleBuilds(cache, (l) => lines.push(l));
    assert.deepEqual(removed, [join(cache, 'build-ci-dead')]);
    assert.ok(!existsSync(join(cache, 'build-ci-dead')));
    assert.ok(existsSync(join(cache, 'build-ci-live', 'root')));
    assert.ok(!readFileSync('/proc/self/mountinfo', 'utf8').includes(cache), 'nothing stays mounted');
    assert.match(lines.join('\n'), /removing build-ci-dead, left by an interrupted build/);
  } finally {
    spawnSync('umount', ['-l', mounted]);
    rmSync(cache, { recursive: true, force: true });
  }
});
