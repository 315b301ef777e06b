// The GitHub double must be able to fail a test: it refuses what GitHub would refuse and records every
// request or response that GitHub's description does not allow.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { makeAppJwt } from '../../src/server/github/api.ts';
import { GitHubDouble } from './support/github-double.ts';
import { APP_ID, appKeys, WEBHOOK_SECRET } from './support/harness.ts';

test('the double enforces auth, validates bodies against @octokit/openapi, and records violations', async () => {
  const d = new GitHubDouble({ publicKey: appKeys().publicKey, appId: APP_ID, webhookSecret: WEBHOOK_SECRET, tokenTtlMs: 2000 });
  await d.start();
  try {
    d.addRepo('acme/app');
    const jwt = makeAppJwt({ issuer: APP_ID, privateKey: appKeys().privatePem, nowMs: Date.now() });
    const call = async (method: string, path: string, auth: string, body?: unknown) => {
      const r = await fetch(`${d.url}${path}`, { method, headers: { authorization: auth, 'content-type': 'application/json' }, ...(body === undefined ? {} : { body: JSON.stringify(body) }) });
      await r.arrayBuffer();
      return { status: r.status };
    };
    // JWT only for /app/**; installation tokens elsewhere.
    assert.equal((await call('POST', '/app/installations/42/access_tokens', 'token ghs_nope')).status, 401);
    const old = makeAppJwt({ issuer: APP_ID, privateKey: appKeys().privatePem, nowMs: Date.now() - 20 * 60_000 });
    assert.equal((await call('POST', '/app/installations/42/access_tokens', `Bearer ${old}`)).status, 401, 'an expired JWT');
    const wrongIssuer = makeAppJwt({ issuer: '999', privateKey: appKeys().privatePem, nowMs: Date.now() });
    assert.equal((await call('POST', '/app/installations/42/access_tokens', `Bearer ${wrongIssuer}`)).status, 401);
    const minted = await fetch(`${d.url}/app/installations/42/access_tokens`, { method: 'POST', headers: { authorization: `Bearer ${jwt}` } });
    assert.equal(minted.status, 201);
    const { token } = (await minted.json()) as { token: string };
    assert.equal((await call('GET', '/repos/acme/app/actions/runners', `Bearer ${jwt}`)).status, 401, 'a JWT is not an installation token');
    assert.equal((await call('GET', '/repos/acme/app/actions/runners', `token ${token}`)).status, 200);
    // A body GitHub would refuse: 422, and a recorded violation.
    assert.equal((await call('POST', '/repos/acme/app/actions/runners/generate-jitconfig', `token ${token}`, { name: 'x', runner_group_id: 1, labels: [] })).status, 422);
    assert.equal(d.violations.length, 1);
    assert.match(d.violations[0] ?? '', /labels/);
    assert.equal((await call('POST', '/repos/acme/app/actions/runners/generate-jitconfig', `token ${token}`, { name: 'x', labels: ['kiln'] })).status, 422, 'runner_group_id is required');
    // Tokens expire (polled, bounded).
    const until = Date.now() + 10_000;
    let status = 200;
    while (status === 200 && Date.now() < until) {
      status = (await call('GET', '/repos/acme/app/actions/runners', `token ${token}`)).status;
      if (status === 200) await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(status, 401);
    // An endpoint the double does not know is a violation too.
    await call('GET', '/repos/acme/app/hooks', `token ${token}`);
    assert.ok(d.violations.some((v) => v.includes('/repos/acme/app/hooks')));
  } finally {
    await d.close();
  }
});
