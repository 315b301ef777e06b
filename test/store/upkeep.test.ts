// The embedded store's stand-in for autovacuum: churned tables are found by the database's own counters,
// vacuumed and analyzed, and then no longer due.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { sql } from 'kysely';
import { makeTestStore } from './test-stores.ts';
import { tablesDue, upkeep } from '../../src/store/upkeep.ts';
import { insertJobs, markPlaced } from '../../src/store/jobs.ts';
import { connectHost } from '../../src/store/hosts.ts';
import { DEFAULT_REQUIREMENTS } from '../../src/core/requirements.ts';
import { makeServer } from '../../src/server/server.ts';
import { quietLogger } from '../server/harness.ts';
import { makeSecret } from '../../src/store/tokens.ts';
import { makeApiClient } from '../support/test-client.ts';

async function churn(store: Awaited<ReturnType<typeof makeTestStore>>): Promise<void> {
  const h = await connectHost(store.db, host, 's1');
  for (let round = 0; round < 3; round++) {
    const jobs = await insertJobs(store.db, Array.from({ length: 300 }, () => spec));
    await store.withTransaction((tx) => markPlaced(tx, jobs.map((j) => ({ jobId: j.id, hostId: h.id }))));
  }
}

const host = { name: 'h', arch: 'amd64' as const, cpus: 8, memoryBytes: 32 * 1024 ** 3, diskBytes: 500 * 1024 ** 3, accel: 'tcg' as const, labels: [], driver: 'memory', agentVersion: '0.1.0' };
const spec = { tenant: 'default', requirements: DEFAULT_REQUIREMENTS, labels: [], image: 'default', command: ['true'], env: {}, timeoutMs: 60_000, network: 'none' as const, priority: 0 };

void test('embedded store: churned tables are vacuumed and analyzed, then no longer due', async () => {
  const store = await makeTestStore('pglite');
  try {
    await churn(store);
    const due = await tablesDue(store.db);
    const jobs = due.find((t) => t.table === 'jobs');
    assert.deepEqual(jobs, { table: 'jobs', vacuum: true, analyze: true }, `900 placed jobs left 900 dead rows: ${JSON.stringify(due)}`);
    assert.ok(due.some((t) => t.table === 'job_events' && t.analyze), 'the transitions table needs statistics');

    const done = await upkeep(store.db, due);
    assert.deepEqual(done.map((d) => [d.table, d.what]).find(([t]) => t === 'jobs'), ['jobs', 'VACUUM (ANALYZE)']);
    const after = await sql<{ dead: number; analyzed: boolean }>`
      SELECT n_dead_tup::int AS dead, last_analyze IS NOT NULL AS analyzed FROM pg_stat_user_tables WHERE relname = 'jobs'`.execute(store.db);
    assert.deepEqual(after.rows[0], { dead: 0, analyzed: true });
    assert.equal((await tablesDue(store.db)).find((t) => t.table === 'jobs'), undefined, 'no longer due');
    const stats = await sql<{ n: number }>`SELECT count(*)::int AS n FROM pg_stats WHERE tablename = 'jobs'`.execute(store.db);
    assert.ok(stats.rows[0]!.n > 0, 'the planner has statistics now');
  } finally {
    await store.close();
  }
});

void test('the embedded server\'s leader does it once the server is quiet, not while jobs keep coming', async () => {
  const store = await makeTestStore('pglite');
  const admin = makeSecret('admin');
  const server = await makeServer({ store, logger: quietLogger(), adminToken: admin, leaderIntervalMs: 50, upkeep: { everyMs: 100, quietMs: 4000, atMostEveryMs: 60_000 } });
  try {
    await churn(store);
    const runs: number[] = [];
    server.events.on('store.upkeep', () => runs.push(performance.now()));
    const url = await server.listen({ host: '127.0.0.1', port: 0 });
    const client = makeApiClient({ server: url, token: admin });
    await server.events.waitFor('store.upkeep', () => true, 20_000); // a quiet start: it runs at once
    // Then submissions every 100 ms (never 4 s of quiet, even when a churning statement holds the loop at load 12:
    // with 1.5 s, one held loop at that load let the upkeep run mid-stream)
    // while the tables churn again, and 2 s more.
    let busy = true;
    await client.request('POST', '/v1/jobs', { command: ['true'] });
    const busyFrom = performance.now();
    const submitting = (async () => {
      while (busy) {
        await client.request('POST', '/v1/jobs', { command: ['true'] });
        await new Promise((r) => setTimeout(r, 100));
      }
    })();
    await churn(store);
    await new Promise((r) => setTimeout(r, 2000));
    busy = false;
    await submitting;
    const quietFrom = performance.now();
    assert.deepEqual(runs.filter((t) => t > busyFrom && t < quietFrom), [], 'nothing while jobs kept coming');
    const { tables } = await server.events.waitFor('store.upkeep', () => true, 20_000);
    const last = runs[runs.length - 1]!;
    assert.ok(last - quietFrom >= 3500, `after the quiet time (${Math.round(last - quietFrom)} ms)`);
    assert.ok(tables.some((t) => t.table === 'jobs' && t.what === 'VACUUM (ANALYZE)'), JSON.stringify(tables));
    const after = await sql<{ dead: number }>`SELECT n_dead_tup::int AS dead FROM pg_stat_user_tables WHERE relname = 'jobs'`.execute(store.db);
    assert.equal(after.rows[0]!.dead, 0);
  } finally {
    await server.close();
    await store.close();
  }
});
