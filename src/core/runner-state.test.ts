import { test } from 'node:test';
import assert from 'node:assert/strict';
import { AVAILABLE_RUNNER_STATES, LIVE_RUNNER_STATES, RUNNER_STATE_LIST, nextRunnerState, runnerTransitionTarget, type RunnerEvent } from './runner-state.ts';

void test('runner states: the happy path', () => {
  let s = nextRunnerState('pending', { type: 'registered' });
  assert.equal(s, 'starting');
  s = nextRunnerState(s, { type: 'came_online' });
  assert.equal(s, 'online');
  s = nextRunnerState(s, { type: 'took_job' });
  assert.equal(s, 'busy');
  s = nextRunnerState(s, { type: 'retire', reason: 'its VM ended' });
  assert.equal(s, 'stopping');
  assert.equal(nextRunnerState(s, { type: 'ended' }), 'gone');
});

void test('runner states: gone takes nothing but ended; a stopping runner found busy is kept busy', () => {
  const events: RunnerEvent[] = [{ type: 'registered' }, { type: 'came_online' }, { type: 'took_job' }, { type: 'retire', reason: 'x' }, { type: 'ended' }];
  for (const e of events) assert.equal(runnerTransitionTarget('gone', e), e.type === 'ended' ? 'gone' : undefined, e.type);
  assert.equal(nextRunnerState('stopping', { type: 'took_job' }), 'busy');
  assert.throws(() => nextRunnerState('online', { type: 'registered' }), /cannot take event/);
  assert.throws(() => nextRunnerState('pending', { type: 'came_online' }), /cannot take event/);
  assert.deepEqual(LIVE_RUNNER_STATES, RUNNER_STATE_LIST.filter((s) => s !== 'gone'));
  assert.deepEqual(AVAILABLE_RUNNER_STATES, ['pending', 'starting', 'online']);
});
