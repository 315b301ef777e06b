import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isKilnError } from '../core/errors.ts';
import { apiHost, formatRef, isLoopbackHost, parseImageRef } from './reference.ts';

const D = `sha256:${'a'.repeat(64)}`;

void test('parses host, port, nested repository, tag and digest', () => {
  assert.deepEqual(parseImageRef(`127.0.0.1:5000/org/app/build:v1@${D}`), { registry: '127.0.0.1:5000', repository: 'org/app/build', tag: 'v1', digest: D });
  assert.deepEqual(parseImageRef('localhost/app'), { registry: 'localhost', repository: 'app' });
  assert.deepEqual(parseImageRef('[::1]:5000/app:x'), { registry: '[::1]:5000', repository: 'app', tag: 'x' });
});

void test('Docker Hub names get docker.io and library/', () => {
  assert.deepEqual(parseImageRef('alpine:3'), { registry: 'docker.io', repository: 'library/alpine', tag: '3' });
  assert.deepEqual(parseImageRef('index.docker.io/me/app'), { registry: 'docker.io', repository: 'me/app' });
  assert.equal(apiHost('docker.io'), 'registry-1.docker.io');
  assert.equal(formatRef(parseImageRef(`ghcr.io/o/a@${D}`)), `ghcr.io/o/a@${D}`);
});

void test('rejects bad names, tags, digests and schemes with a hint', () => {
  for (const bad of ['', 'Host.io/UPPER', 'x.io/app:-bad', `x.io/app@sha256:${'g'.repeat(64)}`, 'http://x.io/app', `x.io/app:${'t'.repeat(129)}`]) {
    assert.throws(() => parseImageRef(bad, 'source 1'), (e) => isKilnError(e, 'oci.reference_invalid') && e.message.includes('source 1') && !!e.hint, bad);
  }
});

void test('loopback detection', () => {
  assert.ok(isLoopbackHost('127.0.0.1:5000'));
  assert.ok(isLoopbackHost('127.3.2.1'));
  assert.ok(isLoopbackHost('localhost:80'));
  assert.ok(isLoopbackHost('[::1]:5000'));
  assert.ok(!isLoopbackHost('registry.example:5000'));
  assert.ok(!isLoopbackHost('10.0.0.1:5000'));
  assert.ok(!isLoopbackHost('127.0.0.1.evil.example'));
});
