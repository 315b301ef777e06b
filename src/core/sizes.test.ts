import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isKilnError } from './errors.ts';
import { formatSize, parseDuration, parseSize } from './sizes.ts';

test('sizes', () => {
  assert.equal(parseSize('512M'), 512 * 1024 ** 2);
  assert.equal(parseSize('2G'), 2 * 1024 ** 3);
  assert.equal(parseSize('10GiB'), 10 * 1024 ** 3);
  assert.equal(parseSize('1.5g'), 1.5 * 1024 ** 3);
  assert.equal(parseSize('4096'), 4096);
  for (const bad of ['', 'lots', '-1G', '0', '5Q', '1 2G']) assert.throws(() => parseSize(bad), (e) => isKilnError(e, 'input.bad_size'), bad);
  assert.equal(formatSize(2 * 1024 ** 3), '2G');
});

test('durations', () => {
  assert.equal(parseDuration('90s'), 90_000);
  assert.equal(parseDuration('10m'), 600_000);
  assert.equal(parseDuration('14d'), 14 * 86_400_000);
  assert.equal(parseDuration('1d12h'), 36 * 3_600_000);
  assert.equal(parseDuration('1h30m'), 5_400_000);
  assert.equal(parseDuration('2.5'), 2500);
  for (const bad of ['', 'soon', '10x', '0s', 'm10']) assert.throws(() => parseDuration(bad), (e) => isKilnError(e, 'input.bad_duration'), bad);
});
