/**
 * HTTPS registries: a docker-registry serving TLS with a self-signed certificate for 127.0.0.1. kiln refuses
 * it until its CA is given in the spec file, then composes over HTTPS.
 */
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { runKiln } from './cli.ts';
import { Harness, makeLoopbackCert, skopeoRaw, type Registry } from './harness.ts';

const h = new Harness();
let reg: Registry;
let certFile: string;
let home: string;
const refs: string[] = [];

void describe('HTTPS registry with a private CA', () => {
  before(async () => {
    home = await h.tempDir('kiln-home-');
    const tls = await makeLoopbackCert(home);
    certFile = tls.certFile;
    reg = await h.startRegistry({ tls });
    for (const arch of ['amd64', 'arm64']) {
      const name = await h.buildImage({ arch });
      refs.push(`${reg.host}/ci/build-${arch}@${await h.buildahPush(name, `docker://${reg.host}/ci/build-${arch}:tmp`, 'oci')}`);
    }
  });
  after(async () => {
    await h.cleanup();
    assert.deepEqual(h.livePids(), []);
  });

  void test('untrusted certificate: a clear error; with the CA in the file: composed over HTTPS', async () => {
    const spec = (extra: string[]) => [`target: ${reg.host}/app/tls`, 'tags: [v1]', 'sources:', ...refs.map((r) => `  - ${r}`), ...extra, ''].join('\n');
    const noCa = join(home, 'no-ca.yaml');
    await writeFile(noCa, spec(['registry:', `  "${reg.host}": {plain-http: false}`]));
    const refused = await runKiln(['manifest', 'create', '-f', noCa], { HOME: home });
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /presented a certificate kiln does not trust .*\[oci\.tls_untrusted\]/);
    assert.match(refused.stderr, /how to fix: give the registry's CA/);

    const withCa = join(home, 'ca.yaml');
    await writeFile(withCa, spec(['registry:', `  "${reg.host}": {plain-http: false, ca: ${certFile}}`]));
    const r = await runKiln(['manifest', 'create', '-f', withCa], { HOME: home });
    assert.equal(r.code, 0, r.stderr);
    assert.equal((await skopeoRaw(`${reg.host}/app/tls:v1`)).digest, r.stdout.split('\n')[0]);
  });
});
