import { test } from 'node:test';
import assert from 'node:assert/strict';
import { jobTimings, labelSetKey, LabelSetLimiter, percentile, pickupSeconds, summarize } from './timings.ts';

test('jobTimings splits a job into wait, boot and run', () => {
  const t = jobTimings({ createdAt: '2026-01-01T00:00:00Z', placedAt: '2026-01-01T00:00:02Z', runningAt: '2026-01-01T00:00:05.5Z', finishedAt: '2026-01-01T00:01:05.5Z' });
  assert.deepEqual(t, { waitSeconds: 2, bootSeconds: 3.5, runSeconds: 60 });
  assert.deepEqual(jobTimings({ createdAt: '2026-01-01T00:00:00Z', placedAt: null, runningAt: null, finishedAt: null }), { waitSeconds: null, bootSeconds: null, runSeconds: null });
  // clocks of two replicas may disagree by a little: never a negative span
  assert.equal(jobTimings({ createdAt: '2026-01-01T00:00:01Z', placedAt: '2026-01-01T00:00:00Z', runningAt: null, finishedAt: null }).waitSeconds, 0);
});

test('pickup is created_at to in_progress', () => {
  assert.equal(pickupSeconds('2026-01-01T00:00:00Z', '2026-01-01T00:00:12Z'), 12);
  assert.equal(pickupSeconds(null, '2026-01-01T00:00:12Z'), null);
});

test('label sets are order-free and bounded', () => {
  assert.equal(labelSetKey(['kiln-arm64', 'kiln']), 'kiln,kiln-arm64');
  assert.equal(labelSetKey([]), '(none)');
  const l = new LabelSetLimiter(2);
  assert.equal(l.key(['a']), 'a');
  assert.equal(l.key(['b']), 'b');
  assert.equal(l.key(['c']), '(other)');
  assert.equal(l.key(['a']), 'a');
});

test('nearest-rank percentiles', () => {
  const v = Array.from({ length: 100 }, (_, i) => i + 1);
  assert.equal(percentile(v, 50), 50);
  assert.equal(percentile(v, 95), 95);
  assert.equal(percentile(v, 99), 99);
  assert.equal(percentile([7], 99), 7);
  assert.equal(percentile([], 50), null);
  assert.deepEqual(summarize([3, 1, 2]), { count: 3, p50: 2, p95: 3, p99: 3, max: 3 });
});
