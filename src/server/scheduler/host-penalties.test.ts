import { test } from 'node:test';
import assert from 'node:assert/strict';
import { penaltyLevels, penaltyScores } from './host-penalties.ts';

void test('host penalties: one failure counts for one half-life, more for longer; then forgotten', () => {
  const f = (hostId: number, at: number) => ({ hostId, at });
  assert.equal(penaltyLevels([], 0, 1000).size, 0);
  const one = [f(7, 0)];
  assert.deepEqual([...penaltyLevels(one, 0, 1000)], [[7, 1]]);
  assert.deepEqual([...penaltyLevels(one, 900, 1000)], [[7, 1]]);
  assert.equal(penaltyLevels(one, 1100, 1000).size, 0, 'one failure is forgiven after a half-life');
  const four = [...one, f(7, 2000), f(7, 2000), f(7, 2000)];
  assert.deepEqual([...penaltyLevels(four, 2000, 1000)], [[7, 3]]);
  assert.deepEqual([...penaltyLevels(four, 3000, 1000)], [[7, 2]]);
  assert.equal(penaltyLevels(four, 4200, 1000).get(7), 1);
  assert.equal(penaltyLevels(four, 6000, 1000).size, 0);
  // Hosts apart; a failure stamped after `now` (another replica's clock) counts as now.
  assert.deepEqual([...penaltyLevels([f(1, 0), f(2, 0), f(2, 0)], 0, 1000)].sort(), [[1, 1], [2, 2]]);
  assert.equal(penaltyScores([f(1, 500)], 0, 1000).get(1), 1);
  assert.throws(() => penaltyLevels(one, 0, 0), RangeError);
});
