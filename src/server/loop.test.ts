import { test } from 'node:test';
import assert from 'node:assert/strict';
import { makeLoop } from './loop.ts';

/** A run that waits until the test lets it finish, counting how often it ran. */
function gatedRun() {
  let runs = 0;
  let release: (() => void) | undefined;
  const started: (() => void)[] = [];
  const run = async () => {
    runs++;
    for (const s of started.splice(0)) s();
    await new Promise<void>((r) => (release = r));
  };
  return {
    run,
    get runs() {
      return runs;
    },
    started: () => new Promise<void>((r) => started.push(r)),
    finish: () => release?.(),
  };
}

test('kicks during a run coalesce into one more run; none before start or after stop', async () => {
  const g = gatedRun();
  const loop = makeLoop(g.run, { onError: (e) => assert.fail(String(e)) });
  loop.kick();
  assert.equal(g.runs, 0, 'a loop starts stopped');
  let started = g.started();
  loop.start();
  await started;
  assert.equal(loop.busy, true);
  loop.kick();
  loop.kick();
  loop.kick();
  started = g.started();
  g.finish();
  await started;
  assert.equal(g.runs, 2, 'three kicks during the first run make one more run');
  g.finish();
  await loop.idle();
  assert.equal(g.runs, 2);
  const stopping = loop.stop();
  await stopping;
  loop.kick();
  await loop.idle();
  assert.equal(g.runs, 2, 'no run after stop');
});

test('a failing run is reported and the loop goes on; pause holds kicks until resume', async () => {
  const errors: unknown[] = [];
  let runs = 0;
  const loop = makeLoop(
    async () => {
      runs++;
      if (runs === 1) throw new Error('boom');
    },
    { onError: (e) => errors.push(e), atTurnEnd: true },
  );
  loop.start();
  await loop.idle();
  assert.equal(errors.length, 1);
  loop.kick();
  await loop.idle();
  assert.equal(runs, 2);
  await loop.pause();
  loop.kick();
  await loop.idle();
  assert.equal(runs, 2, 'paused');
  loop.resume();
  await loop.idle();
  assert.equal(runs, 3);
  await loop.stop();
});
