/**
 * Warm starts on the fleet path, with real VMs: `kiln up` with the QEMU driver (TCG here) and the minimal
 * image. The first job of a shape boots cold and the agent builds its snapshot in the background; the next
 * job restores from it, and the job's record says warm. A snapshot QEMU refuses makes that job fall back to a
 * cold boot (it still succeeds, the record says cold), and the agent rebuilds the snapshot.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { join, resolve } from 'node:path';
import { makeSnapshotStore } from '../../src/vm/snapshot-store.ts';
import { which } from '../../src/cli/exec.ts';
import { ensureImage, makeTestDataDir } from '../support/kiln.ts';
import { findLeaks } from '../support/leaks.ts';
import { freePort, killAll, runKilnCommand, spawnKiln } from './processes.ts';
import { damageSnapshotState } from '../support/damage-snapshot.ts';

after(killAll);

const onCi = process.env.CI === 'true' || process.env.CI === '1';
const skip = !which('qemu-system-x86_64') && !onCi ? 'QEMU is not installed (kiln setup); skipped locally' : false;
const SHAPE = ['--cpus', '1', '--memory', '256M', '--disk', '64M', '--timeout', '3m'];

interface JobOut {
  vmStart: 'warm' | 'cold' | null;
  state: string;
  transitions: { state: string; detail: string | null }[];
}
interface HostOut {
  snapshots: { image: string; state: string; uses: number; error?: string }[] | null;
}

void test('a fleet job restores warm once the agent has built its snapshot; a snapshot QEMU refuses falls back cold', { skip, timeout: 15 * 60_000 }, async () => {
  // By digest: `default` is the newest minimal image in the shared store, which may be another checkout's.
  const image = ensureImage('amd64');
  const data = makeTestDataDir();
  const port = await freePort();
  const up = spawnKiln(['up', '--driver', 'qemu', '--listen', `127.0.0.1:${port}`, '--data-dir', data.dir]);
  try {
    await up.waitForOutput(/kiln is up at/, 120_000);
    const env = { KILN_SERVER: `http://127.0.0.1:${port}`, KILN_DATA_DIR: data.dir, KILN_TOKEN: '' };
    const kiln = async (args: string[]) => {
      const r = await runKilnCommand(args, env);
      assert.equal(r.code, 0, `kiln ${args.join(' ')}: ${r.stderr}`);
      return r.stdout;
    };
    const job = async (text: string): Promise<JobOut> => {
      const id = (await kiln(['jobs', 'submit', '--detach', '--image', image.digest, ...SHAPE, '--', 'echo', text])).trim();
      assert.equal(await kiln(['jobs', 'logs', '-f', id]), `${text}\n`);
      return JSON.parse(await kiln(['jobs', 'get', id])) as JobOut;
    };
    const snapshotState = async () => ((JSON.parse(await kiln(['hosts', 'ls', '--json'])) as HostOut[])[0]?.snapshots ?? [])[0];
    const builtAt = () => makeSnapshotStore(data.dir).list()[0]?.created;
    /** Until the host reports the snapshot ready and the store holds one other than `before` (a rebuild). */
    const waitReady = async (before?: string) => {
      for (let i = 0; i < 600; i++) {
        const s = await snapshotState();
        if (s?.state === 'ready' && builtAt() !== undefined && builtAt() !== before) return s;
        assert.notEqual(s?.state, 'failed', `the snapshot build failed: ${s?.error}`);
        await new Promise((r) => setTimeout(r, 500));
      }
      assert.fail('the agent did not build the snapshot in 5 minutes');
    };

    const first = await job('one');
    assert.equal(first.state, 'succeeded');
    assert.equal(first.vmStart, 'cold', 'no snapshot yet: the job boots cold and does not wait for a build');
    const ready = await waitReady();
    assert.equal(ready.image, image.digest);
    assert.match(await kiln(['hosts', 'ls']), /WARM[\s\S]*1 ready/);

    const second = await job('two');
    assert.equal(second.vmStart, 'warm');
    const ran = second.transitions.find((t) => t.state === 'running');
    assert.match(ran?.detail ?? '', /^warm start, ready in \d+ ms$/);

    const metrics = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    assert.match(metrics, /^kiln_vm_starts_total\{start="cold"\} 1$/m);
    assert.match(metrics, /^kiln_vm_starts_total\{start="warm"\} 1$/m);
    assert.match(metrics, /^kiln_vm_restore_seconds_count 1$/m);

    // Damage the device state under an unchanged stat record (bit rot): only QEMU notices, at the restore.
    const store = makeSnapshotStore(data.dir);
    const [snap] = store.list();
    const damaged = snap!.created;
    damageSnapshotState(join(store.dir, snap!.id));

    const third = await job('three');
    assert.equal(third.state, 'succeeded');
    assert.equal(third.vmStart, 'cold', 'the failed restore fell back to a cold boot');
    const lines = up.output().split('\n').filter((l) => l.includes('warm start failed'));
    assert.equal(lines.length, 1, 'one line says why');
    assert.match(lines[0]!, /booting cold; the snapshot was dropped/);

    await waitReady(damaged);
    const fourth = await job('four');
    assert.equal(fourth.vmStart, 'warm', 'the agent rebuilt the snapshot');
    await up.kill('SIGTERM');
    // Only what this test started: its data directory and cgroups with its data directory's tag (other suites
    // on the machine may be running VMs of their own).
    const tag = createHash('sha256').update(resolve(data.dir)).digest('hex').slice(0, 8);
    assert.deepEqual(findLeaks([data.dir]).filter((l) => l.includes(data.dir) || l.includes(`.${tag}`)), []);
  } finally {
    await up.kill('SIGKILL').catch(() => undefined);
    data.cleanup();
  }
});
