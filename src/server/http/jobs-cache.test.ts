import { test } from 'node:test';
import assert from 'node:assert/strict';
import { resolveSubmission } from './jobs.ts';

const token = (role: 'admin' | 'operator' | 'read-only' | 'viewer') => ({ id: 7, role, tenant: 'team-a' });

test('API caches: keys are per tenant; writing needs the cache-write permission; read-only is the default', () => {
  const read = resolveSubmission({ command: ['true'], cache: { key: 'deps' } }, token('operator'));
  assert.deepEqual(read.cache, { key: 'team-a/deps', write: false, by: 'api token 7' });
  const write = resolveSubmission({ command: ['true'], cache: { key: 'deps', write: true, size: '64M' } }, token('operator'));
  assert.deepEqual(write.cache, { key: 'team-a/deps', write: true, sizeBytes: 64 * 1024 * 1024, by: 'api token 7' });
  const other = resolveSubmission({ command: ['true'], tenant: 'team-b', cache: { key: 'deps', write: true } }, token('admin'));
  assert.equal(other.cache?.key, 'team-b/deps', 'an admin submitting for another tenant uses that tenant\'s caches');
  assert.throws(() => resolveSubmission({ command: ['true'], cache: { key: 'deps', write: true } }, token('read-only')), (e: Error & { code?: string }) => e.code === 'auth.forbidden' && /needs cache-write/.test(e.message));
  assert.throws(() => resolveSubmission({ command: ['true'], cache: { key: 'a/../b' } }, token('operator')), /may not contain/);
  assert.throws(() => resolveSubmission({ command: ['true'], cache: { key: 'deps', size: '1M' } }, token('operator')), /between 16M and 16T/);
});
