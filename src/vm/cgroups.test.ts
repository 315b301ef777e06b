import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createVmCgroup, detectCgroups, listVmCgroups, removeCgroupDirs } from './cgroups.ts';

test('v1: a hierarchy per controller, as /proc/mounts lists them (combined cpu,cpuacct too)', () => {
  const l = detectCgroups(
    [
      'cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,nosuid,cpu,cpuacct 0 0',
      'cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0',
      'cgroup /sys/fs/cgroup/pids cgroup rw,pids 0 0',
      'cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0',
    ].join('\n'),
  );
  assert.deepEqual(l.controllers.cpu, { root: '/sys/fs/cgroup/cpu,cpuacct', version: 1 });
  assert.deepEqual(l.controllers.memory, { root: '/sys/fs/cgroup/memory', version: 1 });
  assert.deepEqual(l.controllers.pids, { root: '/sys/fs/cgroup/pids', version: 1 });
});

test('missing controllers are named, not silently ignored', () => {
  const l = detectCgroups('cgroup /sys/fs/cgroup/pids cgroup rw,pids 0 0\n');
  assert.ok(l.problems.includes('the cpu controller is not mounted'));
  assert.ok(l.problems.includes('the memory controller is not mounted'));
});

// cgroupfs semantics (limits as files in directories) are reproduced in a temp dir: this checks which files
// get which values on each layout; test/vm runs the real thing on this machine's v1 hierarchies.
test('limits written for v1 and v2 layouts; removal cleans up', () => {
  const root = mkdtempSync(join(tmpdir(), 'kiln-cg-'));
  try {
    const v1 = { cpu: join(root, 'cpu'), memory: join(root, 'memory'), pids: join(root, 'pids') };
    for (const d of Object.values(v1)) mkdirSync(d);
    const v2 = join(root, 'unified');
    mkdirSync(v2);
    writeFileSync(join(v2, 'cgroup.subtree_control'), '');
    const limits = { cpus: 2, memoryBytes: 1 << 30, pids: 132 };

    const a = createVmCgroup({ controllers: { cpu: { root: v1.cpu, version: 1 }, memory: { root: v1.memory, version: 1 }, pids: { root: v1.pids, version: 1 } }, problems: [] }, 'vm1', limits);
    assert.equal(readFileSync(join(v1.cpu, 'kiln/vm1/cpu.cfs_quota_us'), 'utf8'), '200000');
    assert.equal(readFileSync(join(v1.cpu, 'kiln/vm1/cpu.cfs_period_us'), 'utf8'), '100000');
    assert.equal(readFileSync(join(v1.memory, 'kiln/vm1/memory.limit_in_bytes'), 'utf8'), String(1 << 30));
    assert.equal(readFileSync(join(v1.pids, 'kiln/vm1/pids.max'), 'utf8'), '132');
    assert.equal(a.procsFiles.length, 3);

    const v2layout = { controllers: { cpu: { root: v2, version: 2 as const }, memory: { root: v2, version: 2 as const }, pids: { root: v2, version: 2 as const } }, problems: [] };
    mkdirSync(join(v2, 'kiln'));
    writeFileSync(join(v2, 'kiln', 'cgroup.subtree_control'), '');
    const b = createVmCgroup(v2layout, 'vm2', limits);
    assert.equal(readFileSync(join(v2, 'kiln/vm2/cpu.max'), 'utf8'), '200000 100000');
    assert.equal(readFileSync(join(v2, 'kiln/vm2/memory.max'), 'utf8'), String(1 << 30));
    assert.equal(readFileSync(join(v2, 'cgroup.subtree_control'), 'utf8'), '+cpu +memory +pids');
    assert.equal(b.dirs.length, 1, 'one directory in the unified hierarchy');
    assert.deepEqual([...listVmCgroups(v2layout).keys()], ['vm2']);

    // On cgroupfs the limit files vanish with rmdir; here we empty the directories first.
    for (const d of [...a.dirs, ...b.dirs]) rmSync(d, { recursive: true });
    assert.deepEqual(removeCgroupDirs([...a.dirs, ...b.dirs]), []);
    assert.ok(!existsSync(join(v1.cpu, 'kiln/vm1')));
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
