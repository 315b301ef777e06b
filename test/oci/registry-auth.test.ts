/**
 * Token auth end to end: a docker-registry configured with `auth: token`, a token-server double that checks
 * Basic credentials and signs JWTs, credentials read from a temp Docker config.json (never the real home).
 */
import assert from 'node:assert/strict';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { runKiln } from './cli.ts';
import { Harness, skopeoRaw, type Registry, type TokenServer } from './harness.ts';

const h = new Harness();
let reg: Registry;
let tokens: TokenServer;
let home: string;
let dockerConfig: string;
const refs: string[] = [];

void describe('token auth through a token-server double', () => {
  before(async () => {
    tokens = await h.startTokenServer({ ci: 's3cret' });
    reg = await h.startRegistry({ token: tokens });
    home = await h.tempDir('kiln-home-');
    dockerConfig = join(home, 'docker');
    await mkdir(dockerConfig);
    await writeFile(join(dockerConfig, 'config.json'), JSON.stringify({ auths: { [reg.host]: { auth: Buffer.from('ci:s3cret').toString('base64') } } }));
    for (const arch of ['amd64', 'arm64']) {
      const name = await h.buildImage({ arch });
      const d = await h.buildahPush(name, `docker://${reg.host}/ci/build-${arch}:tmp`, 'oci', ['--creds', 'ci:s3cret']);
      refs.push(`${reg.host}/ci/build-${arch}@${d}`);
    }
  });
  after(async () => {
    await h.cleanup();
    assert.deepEqual(h.livePids(), []);
  });

  void test('credentials from DOCKER_CONFIG; the mount token asks for pull on the source repository', async () => {
    const before = tokens.requests.length;
    const target = `${reg.host}/app/secure`;
    const r = await runKiln(['manifest', 'create', target, '-t', 'v1', ...refs], { HOME: home, DOCKER_CONFIG: dockerConfig });
    assert.equal(r.code, 0, r.stderr);
    const raw = await skopeoRaw(`${target}:v1`, 'ci:s3cret');
    assert.equal(raw.digest, r.stdout.split('\n')[0]);
    const mine = tokens.requests.slice(before);
    assert.ok(mine.every((q) => q.user === 'ci' && q.service === tokens.service), JSON.stringify(mine));
    assert.ok(
      mine.some((q) => q.scopes.includes('repository:app/secure:pull,push') && q.scopes.includes('repository:ci/build-amd64:pull')),
      `a token request carried both the target push scope and the source pull scope: ${JSON.stringify(mine.map((q) => q.scopes))}`,
    );
  });

  void test('KILN_REGISTRY_USERNAME/PASSWORD work without a config file', async () => {
    const r = await runKiln(['manifest', 'create', `${reg.host}/app/env`, '-t', 'v1', ...refs], { HOME: home, KILN_REGISTRY_USERNAME: 'ci', KILN_REGISTRY_PASSWORD: 's3cret' });
    assert.equal(r.code, 0, r.stderr);
    assert.equal((await skopeoRaw(`${reg.host}/app/env:v1`, 'ci:s3cret')).digest, r.stdout.split('\n')[0]);
  });

  void test('no credentials, or wrong ones: a clear error and a fix, nothing pushed', async () => {
    const none = await runKiln(['manifest', 'create', `${reg.host}/app/denied`, '-t', 'v1', ...refs], { HOME: home });
    assert.equal(none.code, 1);
    assert.match(none.stderr, /source 1 .*\[oci\.unauthorized\]/);
    assert.match(none.stderr, /how to fix: .*docker login/);
    const wrongDir = join(home, 'wrong');
    await mkdir(wrongDir, { recursive: true });
    await writeFile(join(wrongDir, 'config.json'), JSON.stringify({ auths: { [`https://${reg.host}`]: { username: 'ci', password: 'nope' } } }));
    const wrong = await runKiln(['manifest', 'create', `${reg.host}/app/denied`, '-t', 'v1', ...refs], { HOME: home, DOCKER_CONFIG: wrongDir });
    assert.equal(wrong.code, 1);
    assert.match(wrong.stderr, /token service .* answered 401/);
    assert.match(wrong.stderr, /stored credentials were refused/);
    assert.ok(tokens.requests.some((q) => q.user === 'REJECTED:ci'));
    await assert.rejects(skopeoRaw(`${reg.host}/app/denied:v1`, 'ci:s3cret'));
  });
});
