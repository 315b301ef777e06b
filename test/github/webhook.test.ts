// The webhook endpoint through real HTTP: GitHub's signature test vector, the real example payloads with
// real signatures, refusals without side effects, secret rotation, dedupe, durability across a crash.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { signBody, verifySignature } from '../../src/server/github/signature.ts';
import { parseGitHubConfig } from '../../src/server/github/config.ts';
import { appManifest } from '../../src/server/github/manifest.ts';
import { openStore } from '../../src/store/store.ts';
import { WEBHOOK_PATH } from '../../src/server/github/manifest.ts';
import { check, webhookPointer } from './support/openapi.ts';
import { realExamples, workflowJobPayload } from './support/payloads.ts';
import { appKeys, assertInvariants, runnerVms, startGitHubHarness, until, WEBHOOK_SECRET, type GitHubHarness } from './support/harness.ts';

test("GitHub's signature test vector", () => {
  const want = 'sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17';
  assert.equal(signBody("It's a Secret to Everybody", 'Hello, World!'), want);
  assert.ok(verifySignature(["It's a Secret to Everybody"], Buffer.from('Hello, World!'), want));
  assert.ok(verifySignature(['old-secret-0123456789', "It's a Secret to Everybody"], Buffer.from('Hello, World!'), want), 'any configured secret (rotation)');
  assert.ok(!verifySignature(["It's a Secret to Everybody"], Buffer.from('Hello, World?'), want));
  assert.ok(!verifySignature(["It's a Secret to Everybody"], Buffer.from('Hello, World!'), want.toUpperCase().replace('SHA256', 'sha1')));
  assert.ok(!verifySignature(["It's a Secret to Everybody"], Buffer.from('Hello, World!'), undefined));
});

test('config: every problem at once; secrets never serialise; the manifest asks for what kiln needs', () => {
  assert.equal(parseGitHubConfig({}), undefined);
  assert.throws(() => parseGitHubConfig({ KILN_GITHUB_APP_ID: 'abc', KILN_GITHUB_WEBHOOK_SECRET: 'short', KILN_GITHUB_RUNNER_LEVEL: 'planet' }), (e: Error & { code?: string }) => {
    return e.code === 'config.invalid' && /App id/.test(e.message) && /private key/.test(e.message) && /16 characters/.test(e.message) && /planet/.test(e.message);
  });
  const cfg = parseGitHubConfig({
    KILN_GITHUB_APP_ID: '99',
    KILN_GITHUB_PRIVATE_KEY: appKeys().privatePem,
    KILN_GITHUB_WEBHOOK_SECRET: 'new-secret-0123456789',
    KILN_GITHUB_WEBHOOK_SECRET_PREVIOUS: 'old-secret-0123456789',
    KILN_GITHUB_ALLOW: 'acme, octo/app',
  });
  assert.ok(cfg);
  assert.deepEqual(cfg.allow, ['acme', 'octo/app']);
  assert.equal(cfg.webhookSecrets.length, 2);
  const text = JSON.stringify(cfg);
  assert.ok(!text.includes('new-secret') && !text.includes('old-secret') && !text.includes('PRIVATE KEY'), text);
  const m = appManifest({ name: 'kiln-ci', url: 'https://ci.example.com/' }) as { hook_attributes: { url: string }; default_permissions: Record<string, string>; default_events: string[] };
  assert.equal(m.hook_attributes.url, `https://ci.example.com${WEBHOOK_PATH}`);
  assert.deepEqual(m.default_permissions, { administration: 'write', organization_self_hosted_runners: 'write', actions: 'read', contents: 'read', metadata: 'read' });
  assert.deepEqual(m.default_events, ['workflow_job']);
});

test('the real examples validate (except the 2021 one, which lacks keys), and so do the mutations', () => {
  const ex = realExamples();
  assert.equal(ex.length, 8);
  const bad = ex.map((e, i) => [i, check(webhookPointer(e.action), e)] as const).filter(([, b]) => b !== undefined);
  assert.deepEqual(bad.map(([i]) => i), [0]);
  const j = { id: 1, runId: 2, runAttempt: 1, labels: ['kiln-arm64'], repo: 'acme/app', repoId: 3, private: false, ownerType: 'Organization' as const, installationId: 42, runnerId: null, runnerName: null, conclusion: 'cancelled' };
  assert.equal(check(webhookPointer('queued'), workflowJobPayload('queued', j)), undefined);
  assert.equal(check(webhookPointer('completed'), workflowJobPayload('completed', j)), undefined, 'completed/cancelled with no runner');
  assert.equal(check(webhookPointer('in_progress'), workflowJobPayload('in_progress', { ...j, runnerId: 7, runnerName: 'someone-else' })), undefined);
});

void describe('webhook endpoint', () => {
  let h: GitHubHarness;
  before(async () => {
    h = await startGitHubHarness({ agent: false });
  });
  after(async () => {
    await h?.close();
  });
  const post = (body: string, headers: Record<string, string>) =>
    fetch(`${h.url}${WEBHOOK_PATH}`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body });
  const signed = (body: string, secret = WEBHOOK_SECRET, more: Record<string, string> = {}) => ({
    'x-github-event': 'workflow_job',
    'x-github-delivery': randomUUID(),
    'x-hub-signature-256': signBody(secret, body),
    ...more,
  });
  const deliveries = async () => (await h.store.db.selectFrom('github_deliveries').select('delivery_id').execute()).length;

  void test('the webhook is described in /openapi.json, without a bearer token', async () => {
    const doc = (await (await fetch(`${h.url}/openapi.json`)).json()) as { paths: Record<string, { post?: { security?: unknown[]; parameters?: { name: string }[]; responses?: Record<string, unknown> } }> };
    const op = doc.paths[WEBHOOK_PATH]?.post;
    assert.ok(op, 'the webhook path is in the document');
    assert.deepEqual(op.security, []);
    assert.deepEqual(op.parameters?.map((p) => p.name), ['X-GitHub-Event', 'X-GitHub-Delivery', 'X-Hub-Signature-256']);
    assert.deepEqual(Object.keys(op.responses ?? {}).sort(), ['200', '202', '400', '401', '408', '413', '415', '503']);
    assert.ok(doc.paths['/v1/github/jobs'], 'the GitHub API routes are there too');
  });

  void test('every real example is accepted (2xx) and processed; none is kiln work', async () => {
    const ids: string[] = [];
    for (const e of realExamples()) {
      const body = JSON.stringify(e);
      const headers = signed(body);
      const res = await post(body, headers);
      assert.equal(res.status, 202, await res.text());
      ids.push(headers['x-github-delivery']);
    }
    await until('all examples are processed', async () => (await h.store.db.selectFrom('github_deliveries').select('status').where('status', '=', 'pending').execute()).length === 0);
    const rows = await h.store.db.selectFrom('github_deliveries').select(['delivery_id', 'outcome']).where('delivery_id', 'in', ids).execute();
    assert.ok(rows.every((r) => r.outcome !== 'bad_payload'), JSON.stringify(rows));
    const jobs = await h.store.db.selectFrom('github_jobs').select(['decision']).execute();
    assert.ok(jobs.length > 0 && jobs.every((j) => j.decision === 'ignored'), 'ubuntu-latest and self-hosted,k8s are not kiln labels');
    assert.equal((await runnerVms(h)).length, 0);
  });

  void test('bad signature, re-serialised JSON, missing headers, sha1 only, wrong event, not JSON: 4xx and no side effect; the body is not logged', async () => {
    const before = await deliveries();
    const e = realExamples()[5]!;
    e.workflow_job.labels = ['kiln', 'marker-7f3a9c'];
    const body = JSON.stringify(e);
    const cases: [string, string, Record<string, string>, number][] = [
      ['wrong secret', body, signed(body, 'not-the-secret-0123456789'), 401],
      ['one byte changed', body.replace('marker-7f3a9c', 'marker-7f3a9d'), signed(body), 401],
      ['re-serialised JSON', JSON.stringify(e, null, 2), signed(body), 401],
      ['no signature', body, { 'x-github-event': 'workflow_job', 'x-github-delivery': randomUUID() }, 400],
      ['sha1 only', body, { 'x-github-event': 'workflow_job', 'x-github-delivery': randomUUID(), 'x-hub-signature': 'sha1=0000' }, 400],
      ['no delivery id', body, { 'x-github-event': 'workflow_job', 'x-hub-signature-256': signBody(WEBHOOK_SECRET, body) }, 400],
      ['wrong event', body, signed(body, WEBHOOK_SECRET, { 'x-github-event': 'push' }), 400],
    ];
    for (const [what, b, headers, status] of cases) {
      const res = await post(b, headers);
      assert.equal(res.status, status, what);
      const j = (await res.json()) as { error: { code: string; message: string } };
      assert.ok(j.error.code && j.error.message, what);
    }
    const notJson = await fetch(`${h.url}${WEBHOOK_PATH}`, { method: 'POST', headers: { 'content-type': 'text/plain', ...signed('hello') }, body: 'hello' });
    assert.equal(notJson.status, 415);
    assert.equal(await deliveries(), before);
    assert.ok(!h.logs().includes('marker-7f3a9c'), 'the refused body must not be logged');
  });

  void test('rotation: the previous secret is still accepted; ping answers 200', async () => {
    const h2 = await startGitHubHarness({ agent: false, config: { webhookSecrets: [new (await import('../../src/server/github/config.ts')).Secret('brand-new-secret-0123456789'), new (await import('../../src/server/github/config.ts')).Secret(WEBHOOK_SECRET)] } });
    try {
      const body = JSON.stringify(realExamples()[2]);
      for (const s of ['brand-new-secret-0123456789', WEBHOOK_SECRET]) {
        const res = await fetch(`${h2.url}${WEBHOOK_PATH}`, { method: 'POST', headers: { 'content-type': 'application/json', ...signed(body, s) }, body });
        assert.equal(res.status, 202);
      }
      const ping = await fetch(`${h2.url}${WEBHOOK_PATH}`, { method: 'POST', headers: { 'content-type': 'application/json', ...signed('{"zen":"x"}', WEBHOOK_SECRET, { 'x-github-event': 'ping' }) }, body: '{"zen":"x"}' });
      assert.equal(ping.status, 200);
    } finally {
      await h2.close();
    }
  });

  void test('the same delivery id twice: 200 the second time, one record; the same job action through another hook is a no-op', async () => {
    const body = JSON.stringify(realExamples()[1]);
    const headers = signed(body);
    assert.equal((await post(body, headers)).status, 202);
    const again = await post(body, headers);
    assert.equal(again.status, 200);
    assert.deepEqual(await again.json(), { duplicate: true });
    const other = signed(body);
    assert.equal((await post(body, other)).status, 202);
    await until('both are processed', async () => {
      const r = await h.store.db.selectFrom('github_deliveries').select('outcome').where('delivery_id', 'in', [headers['x-github-delivery'], other['x-github-delivery']]).execute();
      return r.length === 2 && r.every((x) => x.outcome !== null);
    });
    const r = await h.store.db.selectFrom('github_deliveries').select(['delivery_id', 'outcome']).where('delivery_id', '=', other['x-github-delivery']).executeTakeFirstOrThrow();
    assert.equal(r.outcome, 'duplicate_action');
  });

  void test('/metrics counts the deliveries by answer and reads GitHub jobs by decision from the store', async () => {
    const text = await (await fetch(`${h.url}/metrics`)).text();
    const value = (line: string) => Number(new RegExp(`^${line.replace(/[{}"]/g, (c) => `\\${c}`)} (\\d+)$`, 'm').exec(text)?.[1] ?? NaN);
    const examples = realExamples().length;
    // Earlier tests here: every example, three more accepted; one duplicate; eight refused (7 cases + not JSON).
    assert.equal(value('kiln_github_webhook_deliveries_total{result="accepted"}'), examples + 2);
    assert.equal(value('kiln_github_webhook_deliveries_total{result="duplicate"}'), 1);
    assert.equal(value('kiln_github_webhook_deliveries_total{result="refused"}'), 8);
    const jobs = await h.store.db.selectFrom('github_jobs').select(['decision', 'state']).execute();
    const ignored = jobs.filter((j) => j.decision === 'ignored');
    const byState = new Map<string, number>();
    for (const j of ignored) byState.set(j.state, (byState.get(j.state) ?? 0) + 1);
    assert.ok(byState.size > 0);
    for (const [state, n] of byState) assert.equal(value(`kiln_github_jobs{decision="ignored",state="${state}"}`), n, state);
    assert.equal(value('kiln_github_deliveries_pending'), 0);
  });
});

test('processed deliveries are pruned after the redelivery window of 3 days; recent ones stay', async () => {
  const h = await startGitHubHarness({ agent: false });
  try {
    await h.server.github!.pause();
    const old = new Date(Date.now() - 4 * 24 * 3600_000);
    await h.store.db
      .insertInto('github_deliveries')
      .values([
        { delivery_id: 'old-done', event: 'workflow_job', action: 'queued', hook_id: null, payload: '{}', status: 'done', received_at: old },
        { delivery_id: 'recent-done', event: 'workflow_job', action: 'queued', hook_id: null, payload: '{}', status: 'done' },
      ])
      .execute();
    h.server.github!.resume();
    await until('the old delivery is pruned', async () => (await h.store.db.selectFrom('github_deliveries').select('delivery_id').where('delivery_id', '=', 'old-done').execute()).length === 0);
    const left = await h.store.db.selectFrom('github_deliveries').select('delivery_id').execute();
    assert.deepEqual(left.map((r) => r.delivery_id), ['recent-done']);
  } finally {
    await h.close();
  }
});

test('an accepted delivery survives a crash before it is processed', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'kiln-gh-'));
  try {
    let store = await openStore({ dataDir: dir });
    let h = await startGitHubHarness({ agent: false, store });
    await h.server.github!.pause();
    const job = await h.double.queueJob('acme/secret', ['kiln']);
    assert.equal(h.double.deliveries.at(-1)?.statusCode, 202);
    assert.equal(job.status, 'queued');
    // "Crash": the process goes away without processing (the loop is held); only the store survives.
    await h.server.close();
    await store.close();
    store = await openStore({ dataDir: dir });
    const pending = await store.db.selectFrom('github_deliveries').select('status').execute();
    assert.deepEqual(pending.map((p) => p.status), ['pending']);
    const double = h.double;
    h = await startGitHubHarness({ agent: false, store });
    // The new server talks to the new double; move the job over.
    h.double.jobs.set(job.id, { ...job });
    await until('the delivery is processed after the restart and a runner VM is queued', async () => (await runnerVms(h)).length === 1);
    assert.deepEqual(await assertInvariants(h), []);
    await double.close();
    await h.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
