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

void test('embedded store: churned tables are vacuumed and analyzed, then no longer due', async () => {
  const store = await makeTestStore('pglite');
  try {
    const host = await connectHost(store.db, { name: 'h', arch: 'amd64', cpus: 8, memoryBytes: 32 * 1024 ** 3, diskBytes: 500 * 1024 ** 3, accel: 'tcg', labels: [], driver: 'memory', agentVersion: '0.1.0' }, 's1');
    const spec = { tenant: 'default', requirements: DEFAULT_REQUIREMENTS, labels: [], image: 'default', command: ['true'], env: {}, timeoutMs: 60_000, network: 'none' as const, priority: 0 };
    for (let round = 0; round < 3; round++) {
      const jobs = await insertJobs(store.db, Array.from({ length: 300 }, () => spec));
      await store.withTransaction((tx) => markPlaced(tx, jobs.map((j) => ({ jobId: j.id, hostId: host.id }))));
    }
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
