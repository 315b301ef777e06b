import { test } from 'node:test';
import assert from 'node:assert/strict';
import { makeGroupCommit } from './group-commit.ts';
import { ActiveJobs } from './agents/host-registry.ts';

test('calls made in one event-loop turn share one run; each caller gets its own results, in order', async () => {
  const runs: number[][] = [];
  const double = makeGroupCommit(async (xs: number[]) => {
    runs.push(xs);
    return xs.map((x) => x * 2);
  }, { maxInFlight: 1, maxItems: 100 });
  const [a, b, c] = await Promise.all([double([1]), double([2, 3]), double([4])]);
  assert.deepEqual([a, b, c], [[2], [4, 6], [8]]);
  assert.deepEqual(runs, [[1, 2, 3, 4]]);
});

test('calls arriving while a run is in flight wait and are joined; maxInFlight and maxItems hold', async () => {
  let inFlight = 0;
  let most = 0;
  const sizes: number[] = [];
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  const run = makeGroupCommit(async (xs: number[]) => {
    inFlight++;
    most = Math.max(most, inFlight);
    sizes.push(xs.length);
    await gate;
    inFlight--;
    return xs;
  }, { maxInFlight: 1, maxItems: 3 });
  const first = run([0]);
  await new Promise((r) => setImmediate(r));
  const later = [1, 2, 3, 4, 5].map((x) => run([x]));
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(sizes, [1], 'nothing else starts while the first run is in flight');
  release();
  assert.deepEqual(await Promise.all([first, ...later]), [[0], [1], [2], [3], [4], [5]]);
  assert.deepEqual(sizes, [1, 3, 2]);
  assert.equal(most, 1);
});

test('a joined run that fails is retried per caller, so one bad caller fails alone', async () => {
  const run = makeGroupCommit(async (xs: number[]) => {
    if (xs.includes(13)) throw new Error('thirteen');
    return xs;
  }, { maxInFlight: 1, maxItems: 100 });
  const r = await Promise.allSettled([run([1]), run([13]), run([2])]);
  assert.deepEqual(r.map((x) => x.status), ['fulfilled', 'rejected', 'fulfilled']);
  assert.match(String((r[1] as PromiseRejectedResult).reason), /thirteen/);
});

test('a host ledger keeps the sum of its jobs through set, replace, delete and clear', () => {
  const a = new ActiveJobs();
  a.set(1, { attempt: 1, cpus: 2, memoryBytes: 10, diskBytes: 5 });
  a.set(2, { attempt: 1, cpus: 4, memoryBytes: 20, diskBytes: 5 });
  a.set(2, { attempt: 2, cpus: 1, memoryBytes: 1, diskBytes: 1 });
  assert.deepEqual(a.used, { cpus: 3, memoryBytes: 11, diskBytes: 6 });
  assert.equal(a.delete(1), true);
  assert.equal(a.delete(1), false);
  assert.deepEqual(a.used, { cpus: 1, memoryBytes: 1, diskBytes: 1 });
  a.clear();
  assert.deepEqual(a.used, { cpus: 0, memoryBytes: 0, diskBytes: 0 });
});

test('a call that is not atomic is not run again: every caller of the failed group gets the error', async () => {
  let runs = 0;
  const run = makeGroupCommit(async (xs: number[]) => {
    runs++;
    if (xs.includes(13)) throw new Error('thirteen');
    return xs;
  }, { maxInFlight: 1, maxItems: 100, retryAlone: false });
  const r = await Promise.allSettled([run([1]), run([13]), run([2])]);
  assert.deepEqual(r.map((x) => x.status), ['rejected', 'rejected', 'rejected']);
  assert.equal(runs, 1);
});
