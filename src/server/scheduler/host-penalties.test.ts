import { test } from 'node:test';
import assert from 'node:assert/strict';
import { makeHostPenalties } from './host-penalties.ts';

void test('host penalties: one failure counts for one half-life, more for longer; then forgotten', () => {
  const p = makeHostPenalties(1000);
  assert.equal(p.levels(0).size, 0);
  p.failed(7, 0);
  assert.deepEqual([...p.levels(0)], [[7, 1]]);
  assert.deepEqual([...p.levels(900)], [[7, 1]]);
  assert.equal(p.levels(1100).size, 0, 'one failure is forgiven after a half-life');
  p.failed(7, 2000);
  p.failed(7, 2000);
  p.failed(7, 2000);
  assert.deepEqual([...p.levels(2000)], [[7, 3]]);
  assert.deepEqual([...p.levels(3000)], [[7, 2]]);
  assert.ok(p.levels(4200).get(7) === 1);
  assert.equal(p.levels(6000).size, 0);
  assert.equal(p.score(7, 100_000), 0, 'forgotten entirely');
  assert.throws(() => makeHostPenalties(0), RangeError);
});
