// The README's path through the real config code: KILN_GITHUB_* variables → loadServerConfig → the logged
// (redacted) start-up config → a server that takes a queued job from the GitHub double to a runner VM.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { loadServerConfig, redact } from '../../src/cli/fleet-config.ts';
import { makeServer } from '../../src/server/server.ts';
import { WEBHOOK_PATH } from '../../src/server/github/manifest.ts';
import { openStore } from '../../src/store/store.ts';
import { GitHubDouble } from './support/github-double.ts';
import { APP_ID, appKeys, until, WEBHOOK_SECRET } from './support/harness.ts';

test('KILN_GITHUB_* configure the server; the start-up log hides every secret; a queued job gets a runner VM', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'kiln-ghcfg-'));
  const double = new GitHubDouble({ publicKey: appKeys().publicKey, appId: APP_ID, webhookSecret: WEBHOOK_SECRET });
  await double.start();
  double.addRepo('acme/app', { private: true });
  const keyFile = join(dir, 'app.pem');
  writeFileSync(keyFile, appKeys().privatePem, { mode: 0o600 });
  const lines: string[] = [];
  const logger = pino({ level: 'debug' }, new Writable({ write: (c: Buffer, _e, cb) => (lines.push(c.toString()), cb()) }));
  const cfg = loadServerConfig({ dataDir: dir, listen: '127.0.0.1:0' }, {
    KILN_GITHUB_APP_ID: APP_ID,
    KILN_GITHUB_PRIVATE_KEY_FILE: keyFile,
    KILN_GITHUB_WEBHOOK_SECRET: WEBHOOK_SECRET,
    KILN_GITHUB_WEBHOOK_SECRET_PREVIOUS: 'previous-secret-0123456789',
    KILN_GITHUB_ALLOW: 'acme',
    KILN_GITHUB_API_URL: double.url,
  });
  assert.ok(cfg.github);
  logger.info({ config: redact(cfg) }, 'kiln server starting');
  const store = await openStore({});
  const server = await makeServer({ store, logger, github: { config: cfg.github, pollMs: 100 }, leaderIntervalMs: 100 });
  try {
    const url = await server.listen({ host: '127.0.0.1', port: 0 });
    double.webhookUrl = `${url}${WEBHOOK_PATH}`;
    const job = await double.queueJob('acme/app', ['kiln-arm64']);
    await until('a runner registration and its VM', async () => double.runners.size === 1 && (await store.db.selectFrom('jobs').select('id').where('tenant', '=', 'github').execute()).length === 1);
    const [runner] = [...double.runners.values()];
    assert.deepEqual(runner?.labels, ['self-hosted', 'linux', 'ARM64', 'kiln-arm64']);
    const vm = await store.db.selectFrom('jobs').select(['arch', 'network', 'image']).where('tenant', '=', 'github').executeTakeFirstOrThrow();
    assert.deepEqual(vm, { arch: 'arm64', network: 'user', image: 'runner' });
    assert.equal(double.jobs.get(job.id)?.status, 'queued');
    const text = lines.join('');
    assert.match(text, /kiln server starting/);
    for (const secret of [WEBHOOK_SECRET, 'previous-secret-0123456789', appKeys().privatePem.split('\n')[1]!, ...double.tokens.keys()]) assert.ok(!text.includes(secret), 'a secret reached the log');
    assert.deepEqual(double.violations, []);
  } finally {
    await server.close();
    await store.close();
    await double.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
