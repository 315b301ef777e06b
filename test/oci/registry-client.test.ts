/**
 * The registry client's edges against a real docker-registry (mount refused → streamed upload) and against
 * small misbehaving HTTP servers standing in for registries under load or corrupting content.
 */
import assert from 'node:assert/strict';
import { createServer, type RequestListener, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { writeFile } from 'node:fs/promises';
import { after, before, describe, test } from 'node:test';
import { isKilnError } from '../../src/core/errors.ts';
import { makeDockerConfigCredentials } from '../../src/oci/auth.ts';
import { sha256Digest } from '../../src/oci/digest.ts';
import { RegistryClient } from '../../src/oci/registry-client.ts';
import { Harness, freePort, skopeo, type Registry } from './harness.ts';

const h = new Harness();
let reg: Registry;
const servers: Server[] = [];
const noCreds = makeDockerConfigCredentials({});

async function serve(handler: RequestListener): Promise<string> {
  const s = createServer(handler);
  servers.push(s);
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  return `127.0.0.1:${(s.address() as AddressInfo).port}`;
}

void describe('registry client', () => {
  before(async () => {
    reg = await h.startRegistry();
  });
  after(async () => {
    for (const s of servers) {
      s.closeAllConnections();
      await new Promise((r) => s.close(r));
    }
    await h.cleanup();
    assert.deepEqual(h.livePids(), []);
  });

  void test('a mount the registry cannot do (202) falls back to streaming into the returned upload session', async () => {
    const name = await h.buildImage({ arch: 'amd64', bytes: 100 * 1024 });
    await h.buildahPush(name, `docker://${reg.host}/src/repo:t`, 'oci');
    const raw = JSON.parse(await skopeo(['inspect', '--raw', '--tls-verify=false', `docker://${reg.host}/src/repo:t`])) as { layers: { digest: string }[] };
    const layer = raw.layers[0]?.digest ?? '';
    const c = new RegistryClient({ credentials: noCreds, chunkSize: 32 * 1024 });
    try {
      // `from` names a repository that does not hold the blob: distribution answers 202 with an upload.
      const m = await c.mountBlob(reg.host, 'dst/repo', layer, 'empty/repo');
      assert.equal(m.mounted, false);
      assert.equal(await c.hasBlob(reg.host, 'dst/repo', layer), false);
      if (m.mounted) return;
      const { body } = await c.openBlob(reg.host, 'src/repo', layer);
      await c.uploadBlob(reg.host, 'dst/repo', layer, m.location, body);
      assert.equal(await c.hasBlob(reg.host, 'dst/repo', layer), true);
      const bytes = await c.getBlobBytes(reg.host, 'dst/repo', layer, 10 * 1024 * 1024);
      assert.equal(sha256Digest(bytes), layer);
      // And a real mount from the repository that holds it answers 201.
      assert.deepEqual(await c.mountBlob(reg.host, 'dst/other', layer, 'src/repo'), { mounted: true });
    } finally {
      await c.close();
    }
  });

  void test('429 and 503 are retried with backoff (Retry-After honoured); 404 is not', async () => {
    let hits = 0;
    const host = await serve((req, res) => {
      hits++;
      if (req.url === '/v2/' && hits === 1) return void res.writeHead(429, { 'retry-after': '0' }).end();
      if (req.url === '/v2/' && hits === 2) return void res.writeHead(503).end();
      if (req.url === '/v2/') return void res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
      res.writeHead(404, { 'content-type': 'application/json' }).end('{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}');
    });
    const retries: { delayMs: number; reason: string }[] = [];
    const slept: number[] = [];
    const c = new RegistryClient({ credentials: noCreds, retry: { attempts: 4, baseMs: 50, maxMs: 1000 }, sleep: async (ms) => void slept.push(ms), onRetry: (r) => retries.push(r) });
    try {
      await c.ping(host);
      assert.deepEqual(retries.map((r) => r.reason), ['HTTP 429', 'HTTP 503']);
      assert.deepEqual(slept, [0, 100]);
      hits = 10;
      await assert.rejects(c.getManifest(host, 'a/b', 'latest'), (e) => isKilnError(e, 'oci.not_found'));
      assert.equal(hits, 11, 'a 404 is answered once, not retried');
    } finally {
      await c.close();
    }
  });

  void test('an unreachable registry fails after bounded retries with a clear error', async () => {
    const port = await freePort();
    const c = new RegistryClient({ credentials: noCreds, retry: { attempts: 3, baseMs: 1, maxMs: 2 } });
    try {
      await assert.rejects(c.ping(`127.0.0.1:${port}`), (e) => isKilnError(e, 'oci.registry_unreachable') && e.kind === 'unavailable' && !!e.hint);
    } finally {
      await c.close();
    }
  });

  void test('content that does not match its digest is refused', async () => {
    const good = Buffer.from('{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[]}');
    const evil = Buffer.from(good.toString().replace('"layers":[]', '"layers":[ ]'));
    const host = await serve((req, res) => {
      if (req.url?.includes('/manifests/')) {
        res.writeHead(200, { 'content-type': 'application/vnd.oci.image.manifest.v1+json', 'docker-content-digest': sha256Digest(good) }).end(evil);
      } else res.writeHead(200, { 'content-type': 'application/octet-stream' }).end(evil);
    });
    const c = new RegistryClient({ credentials: noCreds });
    try {
      await assert.rejects(c.getManifest(host, 'a/b', sha256Digest(good)), (e) => isKilnError(e, 'oci.digest_mismatch'));
      await assert.rejects(c.getManifest(host, 'a/b', 'latest'), (e) => isKilnError(e, 'oci.digest_mismatch') && e.message.includes('Docker-Content-Digest'));
      await assert.rejects(c.getBlobBytes(host, 'a/b', sha256Digest(good)), (e) => isKilnError(e, 'oci.digest_mismatch'));
    } finally {
      await c.close();
    }
  });

  void test('every manifest request lists all four manifest and index types in Accept', async () => {
    const accepts: string[] = [];
    const host = await serve((req, res) => {
      accepts.push(String(req.headers.accept));
      res.writeHead(404).end();
    });
    const c = new RegistryClient({ credentials: noCreds, retry: { attempts: 1, baseMs: 1, maxMs: 1 } });
    try {
      await c.headManifest(host, 'a/b', 'latest');
      await c.getManifest(host, 'a/b', 'latest').catch(() => undefined);
    } finally {
      await c.close();
    }
    assert.equal(accepts.length, 2);
    for (const a of accepts) {
      for (const t of ['application/vnd.oci.image.index.v1+json', 'application/vnd.docker.distribution.manifest.list.v2+json', 'application/vnd.oci.image.manifest.v1+json', 'application/vnd.docker.distribution.manifest.v2+json']) {
        assert.ok(a.includes(t), `${t} in ${a}`);
      }
    }
  });

  void test('a Basic challenge is answered with config.json credentials for that host only', async () => {
    const seen: (string | undefined)[] = [];
    const host = await serve((req, res) => {
      seen.push(req.headers.authorization);
      if (req.headers.authorization !== `Basic ${Buffer.from('bob:pa:ss').toString('base64')}`) {
        return void res.writeHead(401, { 'www-authenticate': 'Basic realm="Registry Realm"', 'content-type': 'application/json' }).end('{"errors":[{"code":"UNAUTHORIZED"}]}');
      }
      res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    });
    const dir = await h.tempDir('kiln-basic-');
    const file = `${dir}/config.json`;
    await writeFile(file, JSON.stringify({ auths: { [host]: { auth: Buffer.from('bob:pa:ss').toString('base64') } } }));
    const c = new RegistryClient({ credentials: makeDockerConfigCredentials({ configFile: file }) });
    const anon = new RegistryClient({ credentials: makeDockerConfigCredentials({ configFile: `${dir}/none.json` }) });
    try {
      await c.ping(host);
      assert.equal(seen[0], undefined, 'no credentials before the registry asks');
      assert.match(seen[1] ?? '', /^Basic /);
      await c.ping(host);
      assert.equal(seen.length, 3, 'the next request carries them up front');
      await assert.rejects(anon.ping(host), (e) => isKilnError(e, 'oci.unauthorized') && (e.hint ?? '').includes('docker login'));
    } finally {
      await c.close();
      await anon.close();
    }
  });

  void test('a non-loopback registry is reached over HTTPS; plain HTTP realms off loopback are refused', async () => {
    const c = new RegistryClient({ credentials: noCreds, hosts: { 'insecure.example:5000': { plainHttp: true } } });
    assert.equal(c.baseUrl('registry.example:5000'), 'https://registry.example:5000');
    assert.equal(c.baseUrl('docker.io'), 'https://registry-1.docker.io');
    assert.equal(c.baseUrl('127.0.0.1:5000'), 'http://127.0.0.1:5000');
    assert.equal(c.baseUrl('insecure.example:5000'), 'http://insecure.example:5000');
    // A loopback "registry" whose bearer realm is plain HTTP on another host: kiln must not go there.
    const host = await serve((_req, res) => {
      res.writeHead(401, { 'www-authenticate': 'Bearer realm="http://auth.example/token",service="x"' }).end();
    });
    try {
      await assert.rejects(c.ping(host), (e) => isKilnError(e, 'oci.plain_http_refused') && (e.hint ?? '').includes('--plain-http auth.example'));
    } finally {
      await c.close();
    }
  });
});
