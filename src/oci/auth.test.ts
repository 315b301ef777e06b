import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { isKilnError } from '../core/errors.ts';
import { challengeScopes, credentialFromAuthEntry, makeDockerConfigCredentials, mergeScopes, parseChallenges } from './auth.ts';

void test('parses the bearer challenge from the token spec, including a scope with spaces and commas', () => {
  const [c] = parseChallenges('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:samalba/my-app:pull,push"');
  assert.equal(c?.scheme, 'bearer');
  assert.deepEqual(c?.params, { realm: 'https://auth.docker.io/token', service: 'registry.docker.io', scope: 'repository:samalba/my-app:pull,push' });
  const [d] = parseChallenges('Bearer realm="https://r/t",scope="repository:a:pull repository:b:pull",error="insufficient_scope"');
  assert.deepEqual(challengeScopes(d!), ['repository:a:pull', 'repository:b:pull']);
  assert.equal(d?.params.error, 'insufficient_scope');
});

void test('parses basic challenges, unquoted values and several challenges in one header', () => {
  const cs = parseChallenges('Basic realm="Registry Realm", Bearer realm=https://x/token,service=svc');
  assert.deepEqual(cs.map((c) => c.scheme), ['basic', 'bearer']);
  assert.equal(cs[0]?.params.realm, 'Registry Realm');
  assert.equal(cs[1]?.params.service, 'svc');
  assert.deepEqual(parseChallenges(''), []);
});

void test('merges scopes per repository', () => {
  assert.deepEqual(mergeScopes(['repository:a:pull', 'repository:b:pull', 'repository:a:push,pull']), ['repository:a:pull,push', 'repository:b:pull']);
});

void test('reads auths entries: base64 auth, username/password, identity tokens', () => {
  assert.deepEqual(credentialFromAuthEntry({ auth: Buffer.from('u:p:with:colons').toString('base64') }), { username: 'u', password: 'p:with:colons' });
  assert.deepEqual(credentialFromAuthEntry({ username: 'u', password: 'p' }), { username: 'u', password: 'p' });
  assert.deepEqual(credentialFromAuthEntry({ identitytoken: 't' }), { identityToken: 't' });
  assert.equal(credentialFromAuthEntry({}), undefined);
});

void test('finds credentials by any key Docker writes, asks helpers first, explicit ones win', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'kiln-auth-'));
  try {
    const file = join(dir, 'config.json');
    await writeFile(
      file,
      JSON.stringify({
        auths: {
          'https://index.docker.io/v1/': { auth: Buffer.from('hub:pw').toString('base64') },
          'https://ghcr.io': { username: 'gh', password: 'tok' },
          'r.example:5000': { auth: Buffer.from('r:pw').toString('base64') },
        },
        credHelpers: { 'helped.example': 'fake' },
      }),
    );
    const asked: string[] = [];
    const src = makeDockerConfigCredentials({
      configFile: file,
      explicit: { 'ghcr.io': { username: 'env', password: 'e' } },
      runHelper: async (helper, server) => {
        asked.push(`${helper} ${server}`);
        return server === 'helped.example' ? { Username: '<token>', Secret: 'idt' } : undefined;
      },
    });
    assert.deepEqual(await src.get('docker.io'), { username: 'hub', password: 'pw' });
    assert.deepEqual(await src.get('ghcr.io'), { username: 'env', password: 'e' });
    assert.deepEqual(await src.get('r.example:5000'), { username: 'r', password: 'pw' });
    assert.deepEqual(await src.get('helped.example'), { identityToken: 'idt' });
    assert.deepEqual(asked, ['fake helped.example']);
    assert.equal(await src.get('unknown.example'), undefined);
    assert.equal(await makeDockerConfigCredentials({ configFile: join(dir, 'missing.json') }).get('x.io'), undefined);
    await writeFile(join(dir, 'bad.json'), '{');
    await assert.rejects(makeDockerConfigCredentials({ configFile: join(dir, 'bad.json') }).get('x.io'), (e) => isKilnError(e, 'oci.registry_config_invalid'));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
