// Two kiln server replicas on one PostgreSQL: deliveries land on either; only the leader talks to GitHub,
// so each queued job gets exactly one runner VM.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { pino } from 'pino';
import { makeServer, type KilnServer } from '../../src/server/server.ts';
import { openStore, type Store } from '../../src/store/store.ts';
import { WEBHOOK_PATH } from '../../src/server/github/manifest.ts';
import { makeTestStore, testDatabaseUrl } from '../store/test-stores.ts';
import { GitHubDouble } from './support/github-double.ts';
import { APP_ID, appKeys, testGitHubConfig, until, WEBHOOK_SECRET } from './support/harness.ts';

const skip = testDatabaseUrl ? false : 'needs PostgreSQL (KILN_TEST_DATABASE_URL)';

void test('deliveries to either replica: one leader provisions, one VM per job', { skip, timeout: 120_000 }, async () => {
  const double = new GitHubDouble({ publicKey: appKeys().publicKey, appId: APP_ID, webhookSecret: WEBHOOK_SECRET });
  await double.start();
  double.addRepo('acme/app', { private: true });
  const first = await makeTestStore('postgres');
  const second: Store = await openStore({ databaseUrl: first.url!, poolSize: 5 });
  const logger = pino({ level: 'silent' });
  const servers: KilnServer[] = [];
  try {
    for (const store of [first, second]) {
      servers.push(await makeServer({ store, logger, leaderIntervalMs: 100, options: { pollMs: 100 }, github: { config: testGitHubConfig(double.url), pollMs: 100 } }));
    }
    const urls = await Promise.all(servers.map((s) => s.listen({ host: '127.0.0.1', port: 0 })));
    await until('one leader', () => servers.filter((s) => s.leader.isLeader()).length === 1);
    const jobs = [];
    for (let i = 0; i < 20; i++) {
      double.webhookUrl = `${urls[i % 2]}${WEBHOOK_PATH}`;
      jobs.push(await double.queueJob('acme/app', ['kiln']));
      // The same job action again through the other replica (another hook): a no-op.
      double.webhookUrl = `${urls[(i + 1) % 2]}${WEBHOOK_PATH}`;
      await double.sendWebhook(jobs[i]!, 'queued');
    }
    await until('20 runner VMs', async () => (await first.db.selectFrom('jobs').select('id').where('tenant', '=', 'github').execute()).length >= 20, 60_000);
    await servers.find((s) => s.leader.isLeader())!.github!.pause();
    const runners = await first.db.selectFrom('github_runners').select(['for_job_id']).execute();
    assert.equal(runners.length, 20);
    assert.deepEqual(new Set(runners.map((r) => r.for_job_id)), new Set(jobs.map((j) => j.id)));
    assert.equal((await first.db.selectFrom('jobs').select('id').where('tenant', '=', 'github').execute()).length, 20);
    assert.equal(double.runners.size, 20);
    assert.deepEqual(double.violations, []);
  } finally {
    for (const s of servers) await s.close();
    await second.close();
    await first.close();
    await double.close();
  }
});
