import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isKilnError } from '../core/errors.ts';
import { formatPlatform, parsePlatform, platformFromConfig, platformJson, platformKey } from './platform.ts';

void test('parses and normalises aliases', () => {
  assert.deepEqual(parsePlatform('linux/x86_64'), { os: 'linux', architecture: 'amd64' });
  assert.deepEqual(parsePlatform('linux/aarch64'), { os: 'linux', architecture: 'arm64' });
  assert.deepEqual(parsePlatform('linux/armhf'), { os: 'linux', architecture: 'arm', variant: 'v7' });
  assert.deepEqual(parsePlatform('linux/armel'), { os: 'linux', architecture: 'arm', variant: 'v6' });
  assert.deepEqual(parsePlatform('linux/i386'), { os: 'linux', architecture: '386' });
  assert.deepEqual(parsePlatform('linux/arm64/v8'), { os: 'linux', architecture: 'arm64', variant: 'v8' });
  assert.deepEqual(parsePlatform('windows/amd64:10.0.17763.1'), { os: 'windows', architecture: 'amd64', 'os.version': '10.0.17763.1' });
  assert.equal(formatPlatform(parsePlatform('linux/arm/v7')), 'linux/arm/v7');
});

void test('rejects malformed platforms', () => {
  for (const bad of ['linux', 'linux/', '/amd64', 'a/b/c/d', 'linux/am d64']) {
    assert.throws(() => parsePlatform(bad), (e) => isKilnError(e, 'oci.platform_invalid'), bad);
  }
});

void test('duplicate key treats arm64 ≡ arm64/v8 and arm ≡ arm/v7 but keeps os.version apart', () => {
  assert.equal(platformKey(parsePlatform('linux/arm64')), platformKey(parsePlatform('linux/arm64/v8')));
  assert.equal(platformKey(parsePlatform('linux/arm')), platformKey(parsePlatform('linux/arm/v7')));
  assert.notEqual(platformKey(parsePlatform('linux/arm/v6')), platformKey(parsePlatform('linux/arm/v7')));
  assert.notEqual(platformKey(parsePlatform('windows/amd64:10.0.1')), platformKey(parsePlatform('windows/amd64:10.0.2')));
  assert.equal(platformKey(parsePlatform('linux/x86_64')), platformKey(parsePlatform('linux/amd64')));
});

void test('config platforms: aliases normalised, variants kept, incomplete ones undefined', () => {
  assert.deepEqual(platformFromConfig({ os: 'linux', architecture: 'aarch64', variant: 'v8' }), { os: 'linux', architecture: 'arm64', variant: 'v8' });
  assert.equal(platformFromConfig({ os: 'linux' }), undefined);
  assert.equal(platformFromConfig({ os: '', architecture: 'amd64' }), undefined);
  assert.deepEqual(Object.keys(platformJson({ os: 'linux', architecture: 'arm', variant: 'v7' })), ['architecture', 'os', 'variant']);
});
