/** The start-up sweep removes only what dead kilns of *this* data directory left. */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { makeImageStore } from '../../src/image/store.ts';
import { makeQemuDriver } from '../../src/vm/qemu-driver.ts';
import { assertNoLeaks, ensureImage, makeTestDataDir, SHARED_DIR } from '../support/kiln.ts';

const mine = makeTestDataDir();
const other = makeTestDataDir();
after(() => {
  assertNoLeaks(mine.dir);
  assertNoLeaks(other.dir);
  mine.cleanup();
  other.cleanup();
});

test("another data directory's sweep leaves a running VM alone", async () => {
  const image = makeImageStore(SHARED_DIR).toRef(ensureImage('amd64'));
  const a = makeQemuDriver({ dataDir: mine.dir });
  const b = makeQemuDriver({ dataDir: other.dir });
  let out = '';
  const vm = await a.start(
    { id: `sweep-${process.pid}`, arch: 'amd64', cpus: 1, memoryBytes: 256 << 20, diskBytes: 256 << 20, image, job: { command: ['sh', '-c', 'echo up; sleep 600'], env: {} }, timeoutMs: 300_000 },
    { stdout: (c) => (out += c.toString()), stderr: () => undefined },
  );
  try {
    for (let i = 0; i < 1200 && !out.includes('up'); i++) await new Promise((r) => setTimeout(r, 100));
    assert.equal(out, 'up\n', 'the VM is running its job');
    assert.deepEqual((await b.sweep()).removed, []);
    assert.deepEqual((await makeQemuDriver({ dataDir: mine.dir }).sweep()).removed, [], 'a live owner keeps its VMs even from a sweep of the same data directory');
    assert.equal(vm.phase(), 'running');
    // VM ids need only be unique per data directory: the same id runs in the other one at the same time.
    const twin = await b.start(
      { id: `sweep-${process.pid}`, arch: 'amd64', cpus: 1, memoryBytes: 256 << 20, diskBytes: 256 << 20, image, job: { command: ['sh', '-c', 'exit 3'], env: {} }, timeoutMs: 300_000 },
      { stdout: () => undefined, stderr: () => undefined },
    );
    const t = await twin.done;
    assert.equal(t.outcome === 'exited' ? t.exitCode : t.outcome, 3);
    assert.equal(vm.phase(), 'running', 'the twin in another data directory did not disturb this VM');
  } finally {
    await vm.kill('test done');
  }
  assert.equal((await vm.done).outcome, 'killed');
});
