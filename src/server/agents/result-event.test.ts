import { test } from 'node:test';
import assert from 'node:assert/strict';
import { resultEvent } from './result-event.ts';

const job = { cancelRequested: false, timeoutMs: 1000, state: 'running' as const };
const r = (o: Partial<Parameters<typeof resultEvent>[0]>) => ({ jobId: 1, attempt: 1, outcome: 'exited' as const, ...o });

void test('results map to job events', () => {
  assert.deepEqual(resultEvent(r({ exitCode: 0 }), job).event, { type: 'exit', exitCode: 0 });
  assert.deepEqual(resultEvent(r({ exitCode: 42 }), job).fields, { exitCode: 42 });
  assert.equal(resultEvent(r({ outcome: 'timed_out' }), job).event.type, 'time_out');
  assert.equal(resultEvent(r({ outcome: 'killed' }), { ...job, cancelRequested: true }).event.type, 'cancel');
  assert.equal(resultEvent(r({ outcome: 'killed' }), job).fields?.error?.code, 'vm.killed');
  assert.equal(resultEvent(r({ outcome: 'boot_failed', code: 'vm.boot_timeout' }), job).fields?.error?.code, 'vm.boot_timeout');
  assert.equal(resultEvent(r({ outcome: 'launch_failed', code: 'image.not_found' }), job).fields?.error?.code, 'image.not_found');
});
