import { test } from 'node:test';
import assert from 'node:assert/strict';
import { doubtedQueues, LATE_DELIVERY_MS } from './reconciler.ts';

const c = { reconcileMs: 100, recheckMs: 1_000 };
const G = LATE_DELIVERY_MS;

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
  assert.deepEqual(doubtedQueues(u, [], 4_000, 99_000, c), []);
  assert.deepEqual(doubtedQueues(u, [], 5_000 + G - 1, 99_000, c), []);
  // An ingest the grace later: the key's jobs read before the runner ended are read, until one is found taken.
  assert.deepEqual(doubtedQueues(u, [], 5_000 + G, 99_000, c), [{ demandKey: 'k', checkedBefore: 5_000, why: 'unheard_runner', lookFor: 1 }]);
  // Two unheard runners of a key: the later end bounds the reads, two taken jobs are looked for; keys apart.
  const two = doubtedQueues([...u, { demandKey: 'k', finishedAt: 6_000 }, { demandKey: 'j', finishedAt: 5_500 }], [], 6_000 + G, 99_000, c);
  assert.deepEqual(two, [
    { demandKey: 'k', checkedBefore: 6_000, why: 'unheard_runner', lookFor: 2 },
    { demandKey: 'j', checkedBefore: 5_500, why: 'unheard_runner', lookFor: 1 },
  ]);
  // A long reconcile interval is the grace when it is longer.
  assert.deepEqual(doubtedQueues(u, [], 5_000 + G, 99_000, { ...c, reconcileMs: G + 1 }), []);
});

void test('doubted queues: a runner idle online past the recheck interval doubts its key', () => {
  assert.deepEqual(doubtedQueues([], [{ demandKey: 'k', onlineAt: 1_000 }], 0, 2_000, c), [{ demandKey: 'k', checkedBefore: 1_000, why: 'idle_runner', lookFor: null }]);
  // Both reasons: every job read before the later bound is read.
  assert.deepEqual(doubtedQueues([{ demandKey: 'k', finishedAt: 500 }], [{ demandKey: 'k', onlineAt: 1_000 }], 500 + G, 2_500, c), [{ demandKey: 'k', checkedBefore: 1_500, why: 'idle_runner', lookFor: null }]);
});
