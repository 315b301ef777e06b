import { test } from 'node:test';
import assert from 'node:assert/strict';
import { JOB_STATE_LIST, nextJobState, isTerminal, canTransition, type JobEvent } from './job-state.ts';
import { HOST_STATE_LIST, nextHostState, acceptsJobs } from './host-state.ts';

void test('job states: the happy path and every outcome', () => {
  let s = nextJobState('queued', { type: 'place', hostId: 'h' });
  assert.equal(s, 'placed');
  s = nextJobState(s, { type: 'boot' });
  s = nextJobState(s, { type: 'start' });
  assert.equal(s, 'running');
  assert.equal(nextJobState(s, { type: 'exit', exitCode: 0 }), 'succeeded');
  assert.equal(nextJobState(s, { type: 'exit', exitCode: 3 }), 'failed');
  assert.equal(nextJobState(s, { type: 'time_out' }), 'timed_out');
  assert.equal(nextJobState('queued', { type: 'cancel' }), 'cancelled');
  assert.equal(nextJobState('booting', { type: 'lose', reason: 'x' }), 'lost');
  assert.equal(nextJobState('lost', { type: 'requeue' }), 'queued');
});

void test('job states: terminal states accept nothing but lost → queued', () => {
  const events: JobEvent[] = [
    { type: 'place', hostId: 'h' }, { type: 'boot' }, { type: 'start' }, { type: 'exit', exitCode: 0 },
    { type: 'fail', code: 'x' }, { type: 'cancel' }, { type: 'time_out' }, { type: 'lose', reason: 'r' }, { type: 'requeue' },
  ];
  for (const s of JOB_STATE_LIST.filter(isTerminal)) {
    for (const e of events) {
      assert.equal(canTransition(s, e), s === 'lost' && e.type === 'requeue', `${s} + ${e.type}`);
    }
  }
  assert.throws(() => nextJobState('queued', { type: 'start' }), /cannot take event/);
});

void test('host states: connect honours draining; only online uncordoned hosts take jobs', () => {
  assert.equal(nextHostState('offline', { type: 'connect', draining: false }), 'online');
  assert.equal(nextHostState('offline', { type: 'connect', draining: true }), 'draining');
  assert.equal(nextHostState('online', { type: 'drain' }), 'draining');
  assert.equal(nextHostState('draining', { type: 'undrain' }), 'online');
  assert.equal(nextHostState('online', { type: 'disconnect' }), 'offline');
  assert.throws(() => nextHostState('offline', { type: 'drain' }));
  for (const s of HOST_STATE_LIST) assert.equal(acceptsJobs(s, false), s === 'online');
  assert.equal(acceptsJobs('online', true), false);
});
