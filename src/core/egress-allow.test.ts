import { test } from 'node:test';
import assert from 'node:assert/strict';
import { egressAllowFor, normaliseAllowList, type EgressPolicies } from './egress-allow.ts';

const p: EgressPolicies = {
  tenants: new Map([
    ['alice', ['198.51.100.0/24', 'pkg.example.com']],
    ['github', ['10.1.2.3/32']],
  ]),
  repos: new Map([['acme/app', ['10.9.0.0/16', '10.1.2.3/32']]]),
};

test("a job gets its tenant's allowlist, plus its repository's for a GitHub runner VM, without duplicates", () => {
  assert.deepEqual(egressAllowFor(p, { tenant: 'alice', repo: null, network: 'user' }), ['198.51.100.0/24', 'pkg.example.com']);
  assert.deepEqual(egressAllowFor(p, { tenant: 'github', repo: 'Acme/App', network: 'user' }), ['10.1.2.3/32', '10.9.0.0/16']);
  assert.deepEqual(egressAllowFor(p, { tenant: 'github', repo: 'acme/other', network: 'user' }), ['10.1.2.3/32']);
  assert.deepEqual(egressAllowFor(p, { tenant: 'bob', repo: null, network: 'user' }), [], 'another tenant gets none of it');
  assert.deepEqual(egressAllowFor(p, { tenant: 'alice', repo: null, network: 'none' }), [], 'no network, nothing to open');
});

test('allowlists are checked and normalised when set', () => {
  assert.deepEqual(normaliseAllowList(['203.0.113.7', 'API.GitHub.com', '203.0.113.7/32', '2001:db8::/48']), ['203.0.113.7/32', 'api.github.com', '2001:db8::/48']);
  assert.throws(() => normaliseAllowList(['10.0.0.0/33']), /neither an address/);
  assert.throws(() => normaliseAllowList(['a b']), /neither an address/);
  assert.throws(() => normaliseAllowList(Array.from({ length: 300 }, (_, i) => `10.0.${i % 250}.${Math.floor(i / 250)}`)), /at most 256/);
});
