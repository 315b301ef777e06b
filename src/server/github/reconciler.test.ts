import { test } from 'node:test';
import assert from 'node:assert/strict';
import { doubtedQueues } from './reconciler.ts';

const c = { reconcileMs: 100, recheckMs: 1_000 };

void test('doubted queues: a job only waiting for a runner is not doubted', () => {
  // No unheard runner, no idle runner: nothing to re-read, however old the queue.
  assert.deepEqual(doubtedQueues([], [], 1_000_000, 1_000_000, c), []);
  // A runner that came online just now is not idle yet.
  assert.deepEqual(doubtedQueues([], [{ demandKey: 'k', onlineAt: 999_500 }], 1_000_000, 1_000_000, c), []);
  assert.deepEqual(doubtedQueues([], [{ demandKey: 'k', onlineAt: null }], 1_000_000, 1_000_000, c), []);
});

void test('doubted queues: an unheard runner is doubted only once an ingest well after its end brought nothing', () => {
  const u = [{ demandKey: 'k', finishedAt: 5_000 }];
  // The ingest began before the runner ended, or within the grace after: its delivery may still come.
  assert.deepEqual(doubtedQueues(u, [], 4_000, 9_000, c), []);
  assert.deepEqual(doubtedQueues(u, [], 5_050, 9_000, c), []);
  // An ingest a reconcile interval later: the key's jobs read before the runner ended are read again.
  assert.deepEqual(doubtedQueues(u, [], 5_100, 9_000, c), [{ demandKey: 'k', checkedBefore: 5_000, why: 'unheard_runner' }]);
  // Two unheard runners of a key: the later end bounds the reads; other keys are apart.
  const two = doubtedQueues([...u, { demandKey: 'k', finishedAt: 6_000 }, { demandKey: 'j', finishedAt: 5_500 }], [], 7_000, 9_000, c);
  assert.deepEqual(two, [
    { demandKey: 'k', checkedBefore: 6_000, why: 'unheard_runner' },
    { demandKey: 'j', checkedBefore: 5_500, why: 'unheard_runner' },
  ]);
});

void test('doubted queues: a runner idle online past the recheck interval doubts its key', () => {
  assert.deepEqual(doubtedQueues([], [{ demandKey: 'k', onlineAt: 1_000 }], 0, 2_000, c), [{ demandKey: 'k', checkedBefore: 1_000, why: 'idle_runner' }]);
  // The later bound of the two reasons wins.
  assert.deepEqual(doubtedQueues([{ demandKey: 'k', finishedAt: 500 }], [{ demandKey: 'k', onlineAt: 1_000 }], 2_000, 2_500, c), [{ demandKey: 'k', checkedBefore: 1_500, why: 'idle_runner' }]);
});
