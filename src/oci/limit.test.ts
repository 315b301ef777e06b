import assert from 'node:assert/strict';
import { test } from 'node:test';
import { mapLimit } from './limit.ts';

void test('keeps order, bounds concurrency', async () => {
  let inFlight = 0;
  let peak = 0;
  const out = await mapLimit([5, 1, 4, 2, 3], 2, async (x) => {
    inFlight++;
    peak = Math.max(peak, inFlight);
    await new Promise((r) => setImmediate(r));
    inFlight--;
    return x * 10;
  });
  assert.deepEqual(out, [50, 10, 40, 20, 30]);
  assert.equal(peak, 2);
});

void test('throws the earliest item’s failure whatever finishes first', async () => {
  const later = (n: number) => new Promise((r) => setTimeout(r, n));
  await assert.rejects(
    mapLimit([0, 1], 2, async (i) => {
      await later(i === 0 ? 20 : 1);
      throw new Error(`item ${i}`);
    }),
    /item 0/,
  );
});
