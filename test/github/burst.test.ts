// A burst of 2,000 deliveries (10% duplicates: same delivery id, or the same job action through another
// hook), shuffled, through the real endpoint: exactly one runner VM per kiln job whose last word is
// `queued`, none for the others, none lost.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { assertInvariants, runnerVms, startGitHubHarness, until } from './support/harness.ts';
import { testDatabaseUrl } from '../store/test-stores.ts';
import type { DoubleDelivery, DoubleJob } from './support/github-double.ts';

function shuffle<T>(xs: T[], seed: number): T[] {
  let s = seed;
  const rnd = () => ((s = (s * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff);
  for (let i = xs.length - 1; i > 0; i--) {
    const j = Math.floor(rnd() * (i + 1));
    [xs[i], xs[j]] = [xs[j]!, xs[i]!];
  }
  return xs;
}

test('2,000 shuffled deliveries with 10% duplicates: exactly the right VMs', { timeout: 240_000 }, async () => {
  // PostgreSQL when there is one (CI), else the embedded store.
  const h = await startGitHubHarness({ kind: testDatabaseUrl ? 'postgres' : 'pglite', agent: false, config: { maxRunners: 1000, bootTimeoutMs: 600_000 } });
  try {
    await h.server.github!.pause();
    const wanted: DoubleJob[] = [];
    const deliveries: DoubleDelivery[] = [];
    const make = async (labels: string[], actions: ('queued' | 'completed')[]) => {
      const j = await h.double.queueJob('acme/secret', labels, { send: false });
      for (const a of actions) {
        if (a === 'completed') Object.assign(j, { status: 'completed', conclusion: 'cancelled' });
        deliveries.push(await h.double.sendWebhook(j, a, { drop: true }));
      }
      return j;
    };
    for (let i = 0; i < 300; i++) wanted.push(await make(['kiln'], ['queued']));
    for (let i = 0; i < 400; i++) await make(['kiln-2cpu-4gb'], ['queued', 'completed']);
    for (let i = 0; i < 700; i++) await make(['ubuntu-latest'], ['queued']);
    // The jobs that should run are still queued on GitHub.
    for (const j of wanted) j.status = 'queued';
    assert.equal(deliveries.length, 1800);
    const dups = deliveries.filter((_, i) => i % 9 === 0).slice(0, 200).map((d, i) => (i % 2 === 0 ? { ...d } : { ...d, guid: randomUUID() }));
    const all = shuffle([...deliveries, ...dups], 7);
    assert.equal(all.length, 2000);
    let next = 0;
    const statuses: number[] = [];
    await Promise.all(
      Array.from({ length: 16 }, async () => {
        while (next < all.length) {
          const d = all[next++]!;
          statuses.push(await h.double.post(d));
        }
      }),
    );
    assert.equal(statuses.length, 2000);
    assert.ok(statuses.every((s) => s === 202 || s === 200), `every delivery is answered 2xx: ${[...new Set(statuses)].join(',')}`);
    assert.equal(statuses.filter((s) => s === 200).length, 100, 'the same delivery id twice is a duplicate');
    h.server.github!.resume();
    await until('one runner VM per wanted job', async () => (await runnerVms(h)).length >= 300, 180_000);
    await h.server.github!.pause();
    await h.server.github!.pass();
    const vms = await runnerVms(h);
    assert.equal(vms.length, 300);
    const runners = await h.store.db.selectFrom('github_runners').select(['for_job_id', 'state']).execute();
    assert.deepEqual(new Set(runners.map((r) => r.for_job_id)), new Set(wanted.map((j) => j.id)));
    assert.ok(runners.every((r) => r.state === 'starting'));
    const outcomes = await h.store.db.selectFrom('github_deliveries').select('outcome').execute();
    assert.equal(outcomes.length, 1900);
    assert.equal(outcomes.filter((o) => o.outcome === 'duplicate_action').length, 100);
    assert.deepEqual(await assertInvariants(h), []);
    assert.deepEqual(h.double.violations, []);
  } finally {
    await h.close();
  }
});
