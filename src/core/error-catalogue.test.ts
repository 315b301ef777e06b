import { test } from 'node:test';
import assert from 'node:assert/strict';
import { catalogued, httpStatusOf, isRetryable, kindOf } from './error-catalogue.ts';
import { KilnError } from './errors.ts';

test('each listed code has its status, kind and retryability from one entry', () => {
  assert.equal(httpStatusOf(new KilnError('job.not_found', 'x')), 404);
  assert.equal(httpStatusOf(new KilnError('auth.missing', 'x')), 401);
  assert.equal(httpStatusOf(new KilnError('request.too_large', 'x')), 413);
  assert.equal(httpStatusOf(new KilnError('store.unavailable', 'x')), 503);
  assert.equal(new KilnError('store.unavailable', 'x').kind, 'unavailable');
  assert.equal(new KilnError('job.bad_transition', 'x').kind, 'internal');
  assert.equal(isRetryable(new KilnError('github.rate_limited', 'x')), true);
  assert.equal(isRetryable(new KilnError('vm.boot_timeout', 'x')), true);
  assert.equal(isRetryable(new KilnError('job.not_found', 'x')), false);
});

test('a code without an entry takes its prefix family, else its kind', () => {
  assert.equal(httpStatusOf(new KilnError('request.whatever', 'x')), 400);
  assert.equal(httpStatusOf(new KilnError('label.unknown', 'x')), 400);
  assert.equal(kindOf('nothing.listed'), 'user');
  assert.equal(catalogued('nothing.listed'), undefined);
  assert.equal(httpStatusOf(new KilnError('nothing.listed', 'x')), 400);
  assert.equal(httpStatusOf(new KilnError('nothing.listed', 'x', { kind: 'internal' })), 500);
  assert.equal(httpStatusOf(new KilnError('nothing.listed', 'x', { kind: 'unavailable' })), 503);
  assert.equal(isRetryable(new KilnError('registry.down', 'x', { kind: 'unavailable' })), true);
  assert.equal(isRetryable(new KilnError('registry.denied', 'x')), false);
});

test('a thrower may still say the kind; the status follows the code when listed', () => {
  const e = new KilnError('github.unavailable', 'x', { kind: 'unavailable' });
  assert.equal(httpStatusOf(e), 503);
  assert.equal(httpStatusOf(new KilnError('job.not_found', 'x', { kind: 'internal' })), 404);
});
