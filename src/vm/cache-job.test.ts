import { test } from 'node:test';
import assert from 'node:assert/strict';
import { commitDecision } from './cache-job.ts';
import type { VmResult } from './driver.ts';

const timings = { prepareMs: 0, bootMs: 0, runMs: 0, teardownMs: 0 };

test('a cache is committed only for a writing job that exited 0 with /cache unmounted cleanly', () => {
  const ok: VmResult = { outcome: 'exited', exitCode: 0, timings, cacheClean: true };
  assert.deepEqual(commitDecision(true, ok), { commit: true });
  assert.deepEqual(commitDecision('ask', ok), { commit: true }, "'ask' goes on to ask the server");
  const no = (write: boolean | 'ask', r: VmResult, why: RegExp) => {
    const d = commitDecision(write, r);
    assert.equal(d.commit, false);
    if (!d.commit) assert.match(d.why, why);
  };
  no(false, ok, /may only read/);
  no(true, { outcome: 'exited', exitCode: 1, timings, cacheClean: true }, /failed \(exit 1\)/);
  no(true, { outcome: 'exited', exitCode: 0, timings }, /did not unmount \/cache cleanly/);
  no(true, { outcome: 'timed_out', timings }, /did not finish \(timed out\)/);
  no(true, { outcome: 'killed', reason: 'x', timings }, /did not finish \(killed\)/);
  no(true, { outcome: 'crashed', code: 'vm.crashed', message: 'm', consoleTail: [], timings }, /did not finish/);
});
