// The smaller items of issue 17's defect 9 (docs/security.md): escape sequences in CLI output, database
// URL passwords in the start-up log, a revoked KILN_ADMIN_TOKEN after a restart, lastUsedAt, /metrics token.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { printable, table } from '../../src/cli/output.ts';
import { redact, redactUrl } from '../../src/cli/fleet-config.ts';
import { makeServer } from '../../src/server/server.ts';
import { makeSecret, listTokens } from '../../src/store/tokens.ts';
import { makeTestStore } from '../store/test-stores.ts';
import { quietLogger } from './harness.ts';

void test('defect 9: terminal escape sequences from the fleet never reach the operator raw', () => {
  const evil = 'host\u001b]0;pwned\u0007\u001b[2J\u009b31m';
  assert.ok(!/[\u001b\u0007\u009b]/.test(printable(evil)));
  assert.ok(!/[\u001b\u0007\u009b]/.test(table([['NAME'], [evil]])));
  assert.equal(printable('plain text, üñí'), 'plain text, üñí');
});

void test('defect 9: database URL passwords are redacted in every form', () => {
  for (const url of ['postgres://kiln:s3cr/et@db:5432/kiln', 'postgres://kiln:p@ss@db/kiln', 'postgres://kiln@db/kiln?password=s3cret&sslmode=require', 'postgresql://u:s3cret@h/d?sslpassword=s3cret']) {
    const r = redactUrl(url);
    assert.ok(!/s3cr|p@ss|s3cret/.test(r), `${url} → ${r}`);
    assert.ok(!/s3cr|p@ss|s3cret/.test(JSON.stringify(redact({ databaseUrl: url }))));
  }
  assert.equal(redactUrl('postgres://db:5432/kiln'), 'postgres://db:5432/kiln');
});

void test('defect 9: a revoked KILN_ADMIN_TOKEN stays revoked after a restart; lastUsedAt is recorded; /metrics can need a token', async () => {
  const store = await makeTestStore('pglite');
  try {
    const admin = makeSecret('admin');
    const metricsToken = 'metrics-token-0123456789';
    let server = await makeServer({ store, logger: quietLogger(), adminToken: admin, metricsToken });
    let url = await server.listen({ host: '127.0.0.1', port: 0 });
    const auth = { authorization: `Bearer ${admin}` };
    const tokens = (await (await fetch(`${url}/v1/tokens`, { headers: auth })).json()) as { tokens: { id: number; lastUsedAt: string | null }[] };
    assert.ok(tokens.tokens[0]?.lastUsedAt, 'lastUsedAt recorded');
    assert.equal((await fetch(`${url}/metrics`)).status, 401);
    assert.equal((await fetch(`${url}/metrics`, { headers: { authorization: 'Bearer wrong' } })).status, 401);
    assert.equal((await fetch(`${url}/metrics`, { headers: { authorization: `Bearer ${metricsToken}` } })).status, 200);
    assert.equal((await fetch(`${url}/v1/tokens/${tokens.tokens[0]!.id}`, { method: 'DELETE', headers: auth })).status, 200);
    await server.close();
    server = await makeServer({ store, logger: quietLogger(), adminToken: admin });
    url = await server.listen({ host: '127.0.0.1', port: 0 });
    assert.equal((await fetch(`${url}/v1/jobs`, { headers: auth })).status, 401);
    assert.ok((await listTokens(store.db)).every((t) => t.revokedAt !== null));
    await server.close();
  } finally {
    await store.close();
  }
});
