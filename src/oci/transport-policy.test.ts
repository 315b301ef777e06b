import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isKilnError } from '../core/errors.ts';
import { DEFAULT_RETRY, RETRYABLE_STATUS, assertUrlAllowed, backoffMs, mayCarryCredentials, networkErrorCode, schemeFor, tlsErrorCode } from './transport-policy.ts';

void test('loopback defaults to plain HTTP; everything else to HTTPS unless configured', () => {
  assert.equal(schemeFor('127.0.0.1:5000', {}), 'http');
  assert.equal(schemeFor('[::1]:5000', {}), 'http');
  assert.equal(schemeFor('localhost:5000', {}), 'http');
  assert.equal(schemeFor('registry.example', {}), 'https');
  assert.equal(schemeFor('10.0.0.5:5000', {}), 'https');
  assert.equal(schemeFor('10.0.0.5:5000', { '10.0.0.5:5000': { plainHttp: true } }), 'http');
  assert.equal(schemeFor('127.0.0.1:5000', { '127.0.0.1:5000': { plainHttp: false } }), 'https');
});

void test('plain HTTP URLs are refused off loopback unless the host is configured', () => {
  assertUrlAllowed(new URL('https://registry.example/v2/'), {});
  assertUrlAllowed(new URL('http://127.0.0.1:5000/v2/'), {});
  assertUrlAllowed(new URL('http://[::1]:5000/v2/'), {});
  assertUrlAllowed(new URL('http://lan.example:5000/v2/'), { 'lan.example:5000': { plainHttp: true } });
  assert.throws(() => assertUrlAllowed(new URL('http://registry.example/v2/'), {}), (e) => isKilnError(e, 'oci.plain_http_refused') && (e.hint ?? '').includes('--plain-http registry.example'));
  assert.throws(() => assertUrlAllowed(new URL('ftp://registry.example/'), {}), (e) => isKilnError(e, 'oci.plain_http_refused'));
});

void test('credentials travel over HTTPS or to loopback only', () => {
  assert.ok(mayCarryCredentials(new URL('https://x.example/token')));
  assert.ok(mayCarryCredentials(new URL('http://127.0.0.1:1/token')));
  assert.ok(!mayCarryCredentials(new URL('http://lan.example:5000/token')));
});

void test('retry table and backoff', () => {
  for (const s of [429, 500, 502, 503, 504]) assert.ok(RETRYABLE_STATUS.has(s));
  for (const s of [400, 401, 403, 404, 405]) assert.ok(!RETRYABLE_STATUS.has(s));
  assert.deepEqual([1, 2, 3, 4, 5, 6].map((a) => backoffMs(a, DEFAULT_RETRY)), [200, 400, 800, 1600, 3200, 5000]);
  assert.equal(backoffMs(1, DEFAULT_RETRY, '3'), 3000);
  assert.equal(backoffMs(1, DEFAULT_RETRY, '3600'), 30_000);
  assert.equal(backoffMs(2, DEFAULT_RETRY, 'Wed, 21 Oct 2015 07:28:00 GMT'), 400);
  assert.equal(networkErrorCode(Object.assign(new Error('x'), { cause: Object.assign(new Error('y'), { code: 'ECONNRESET' }) })), 'ECONNRESET');
  assert.equal(networkErrorCode(Object.assign(new Error('x'), { code: 'ENOENT' })), undefined);
});

void test('TLS trust failures are recognised (and are not network errors to retry)', () => {
  const e = Object.assign(new Error('self-signed'), { code: 'DEPTH_ZERO_SELF_SIGNED_CERT' });
  assert.equal(tlsErrorCode(e), 'DEPTH_ZERO_SELF_SIGNED_CERT');
  assert.equal(networkErrorCode(e), undefined);
  assert.equal(tlsErrorCode(Object.assign(new Error('x'), { code: 'ECONNRESET' })), undefined);
});
