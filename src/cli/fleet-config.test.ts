import { test } from 'node:test';
import assert from 'node:assert/strict';
import { loadAgentConfig, loadServerConfig, parseMirrorUpstream, redact, parseListen } from './fleet-config.ts';
import { isKilnError } from '../core/errors.ts';

void test('server config: flag > env > file > default', () => {
  const file = { server: { listen: '0.0.0.0:1000', logLimit: '1M' } };
  const d = loadServerConfig({ dataDir: '/tmp/k' }, {}, {});
  assert.deepEqual([d.listen, d.logLimitBytes, d.databaseUrl, d.hostLostAfterMs], [{ host: '127.0.0.1', port: 7370 }, 16 * 1024 ** 2, undefined, 30_000]);
  assert.deepEqual(loadServerConfig({ dataDir: '/tmp/k' }, {}, file).listen, { host: '0.0.0.0', port: 1000 });
  assert.deepEqual(loadServerConfig({ dataDir: '/tmp/k' }, { KILN_LISTEN: '2000' }, file).listen, { host: '127.0.0.1', port: 2000 });
  assert.deepEqual(loadServerConfig({ dataDir: '/tmp/k', listen: '[::1]:3000' }, { KILN_LISTEN: '2000' }, file).listen, { host: '::1', port: 3000 });
  assert.equal(loadServerConfig({ dataDir: '/tmp/k' }, {}, file).logLimitBytes, 1024 ** 2);
  assert.equal(loadServerConfig({ dataDir: '/tmp/k' }, { KILN_DATABASE_URL: 'postgres://u:pw@h/db' }, {}).databaseUrl, 'postgres://u:pw@h/db');
});

void test('server config: every problem reported at once', () => {
  assert.throws(
    () => loadServerConfig({ dataDir: '/tmp/k', listen: 'nope', logLevel: 'loud' }, { KILN_DATABASE_URL: 'mysql://x', KILN_LOG_LIMIT: 'big', KILN_ADMIN_TOKEN: 'short' }, {}),
    (e) => isKilnError(e, 'config.invalid') && /5 problem/.test(e.message) && /nope/.test(e.message) && /postgres:\/\//.test(e.message) && /big/.test(e.message) && /16 characters/.test(e.message) && /loud/.test(e.message),
  );
  assert.throws(() => parseListen('host:99999'));
});

void test('agent config: servers from flags or a comma list, problems together', () => {
  const c = loadAgentConfig({ dataDir: '/tmp/k', label: ['gpu'] }, { KILN_SERVER: 'http://a:1, http://b:2', KILN_TOKEN: 'kiln_agt_x' }, {});
  assert.deepEqual(c.servers, ['http://a:1', 'http://b:2']);
  assert.deepEqual(c.labels, ['gpu']);
  assert.equal(c.driver, 'qemu');
  assert.throws(
    () => loadAgentConfig({ dataDir: '/tmp/k', server: ['ftp://x'], name: 'bad name', driver: 'firecracker', arch: 'mips' }, {}, {}),
    (e) => isKilnError(e, 'config.invalid') && /ftp:\/\/x/.test(e.message) && /join token/.test(e.message) && /bad name/.test(e.message) && /firecracker/.test(e.message) && /mips/.test(e.message),
  );
});

void test('redact hides tokens and database passwords', () => {
  const r = redact({ adminToken: 'kiln_api_secret', databaseUrl: 'postgres://kiln:hunter2@db:5432/kiln', listen: { host: 'h', port: 1 } });
  assert.equal(r.adminToken, '[redacted]');
  assert.equal(r.databaseUrl, 'postgres://kiln:[redacted]@db:5432/kiln');
  assert.ok(!JSON.stringify(r).includes('hunter2') && !JSON.stringify(r).includes('kiln_api_secret'));
});

void test('exit codes of followed jobs', async () => {
  const { exitCodeOf } = await import('./submit.ts');
  const end = (state: string, exitCode: number | null, code?: string) => ({ state: state as never, exitCode, error: code ? { code, message: '' } : null, logTruncated: false });
  assert.equal(exitCodeOf(end('succeeded', 0)), 0);
  assert.equal(exitCodeOf(end('failed', 42)), 42);
  assert.equal(exitCodeOf(end('failed', null, 'vm.boot_timeout')), 123);
  assert.equal(exitCodeOf(end('failed', null, 'image.not_found')), 125);
  assert.equal(exitCodeOf(end('timed_out', null)), 124);
  assert.equal(exitCodeOf(end('cancelled', null)), 130);
  assert.equal(exitCodeOf(end('lost', null)), 123);
});

void test('agent mirror config: flag > env > file, none without an upstream, credentials redacted, problems together', () => {
  const env = { KILN_SERVER: 'http://a:1', KILN_TOKEN: 'kiln_agt_x' };
  assert.equal(loadAgentConfig({ dataDir: '/tmp/k' }, env, {}).mirror, undefined);
  const file = { agent: { mirror: { upstream: 'https://file.example', listen: '127.0.0.1:6000', username: 'u', password: 'file-pw' } } };
  const f = loadAgentConfig({ dataDir: '/tmp/k' }, env, file).mirror;
  assert.deepEqual(f, { registry: 'docker.io', upstream: 'https://file.example', listen: '127.0.0.1:6000', username: 'u', password: 'file-pw', others: [], statusIntervalMs: 15_000 });
  const e = loadAgentConfig({ dataDir: '/tmp/k' }, { ...env, KILN_MIRROR_UPSTREAM: 'https://env.example', KILN_MIRROR_PASSWORD: 'env-pw' }, file).mirror;
  assert.equal(e?.upstream, 'https://env.example');
  assert.equal(e?.password, 'env-pw');
  const c = loadAgentConfig({ dataDir: '/tmp/k', mirrorUpstream: 'https://registry-1.docker.io', mirrorListen: '127.0.0.1:5001' }, { ...env, KILN_MIRROR_UPSTREAM: 'https://env.example' }, file);
  assert.deepEqual([c.mirror?.upstream, c.mirror?.listen], ['https://registry-1.docker.io', '127.0.0.1:5001']);
  assert.equal(loadAgentConfig({ dataDir: '/tmp/k', mirrorUpstream: 'https://h.example' }, env, {}).mirror?.listen, '127.0.0.1:5000');
  const logged = JSON.stringify(redact(c));
  assert.equal(logged.includes('file-pw'), false);
  assert.match(logged, /"password":"\[redacted\]"/);
  assert.throws(
    () => loadAgentConfig({ dataDir: '/tmp/k', mirrorUpstream: 'https://u:p@h.example/v2', mirrorListen: 'http://x' }, env, {}),
    (err) => isKilnError(err, 'config.invalid') && /2 problem/.test(err.message) && /root http\(s\) URL/.test(err.message) && /host:port/.test(err.message),
  );
  assert.throws(() => loadAgentConfig({ dataDir: '/tmp/k' }, { ...env, KILN_MIRROR_PASSWORD: 'x' }, {}), (err) => isKilnError(err, 'config.invalid') && /no mirror upstream/.test(err.message));
  assert.equal(loadServerConfig({ dataDir: '/tmp/k', mirrorUpstream: 'https://registry-1.docker.io' }, {}, {}).mirror?.listen, '127.0.0.1:5000');
});

void test('mirror config: other registries as REGISTRY=URL, repeated or comma-separated, Docker Hub first on the listen port, the others on the next', () => {
  const env = { KILN_SERVER: 'http://a:1', KILN_TOKEN: 'kiln_agt_x' };
  const c = loadAgentConfig({ dataDir: '/tmp/k', mirrorUpstream: ['ghcr.io=http://127.0.0.1:7001', 'http://127.0.0.1:7000', 'quay.io=https://quay.example'], mirrorListen: '127.0.0.1:6000' }, env, {}).mirror;
  assert.deepEqual(c && { registry: c.registry, upstream: c.upstream, listen: c.listen, others: c.others }, {
    registry: 'docker.io',
    upstream: 'http://127.0.0.1:7000',
    listen: '127.0.0.1:6000',
    others: [
      { registry: 'ghcr.io', upstream: 'http://127.0.0.1:7001', listen: '127.0.0.1:6001' },
      { registry: 'quay.io', upstream: 'https://quay.example', listen: '127.0.0.1:6002' },
    ],
  });
  const e = loadAgentConfig({ dataDir: '/tmp/k' }, { ...env, KILN_MIRROR_UPSTREAM: 'https://hub.example, ghcr.io=https://ghcr.io' }, {}).mirror;
  assert.deepEqual([e?.registry, e?.others.map((o) => `${o.registry} ${o.listen}`)], ['docker.io', ['ghcr.io 127.0.0.1:5001']]);
  const file = loadAgentConfig({ dataDir: '/tmp/k' }, env, { mirror: { upstream: ['ghcr.io=https://ghcr.io'] } }).mirror;
  assert.deepEqual([file?.registry, file?.listen, file?.others], ['ghcr.io', '127.0.0.1:5000', []]);
  assert.equal(parseMirrorUpstream('index.docker.io=https://hub.example').registry, 'docker.io');
  assert.throws(
    () => loadAgentConfig({ dataDir: '/tmp/k', mirrorUpstream: ['https://a.example', 'docker.io=https://b.example', 'GHCR.io/x=https://c.example', 'ghcr.io=ftp://x'] }, env, {}),
    (err) => isKilnError(err, 'config.invalid') && /given twice/.test(err.message) && /root http\(s\) URL/.test(err.message) && /not a (URL|registry host name)/.test(err.message),
  );
  assert.throws(() => loadAgentConfig({ dataDir: '/tmp/k', mirrorUpstream: ['https://a.example', 'ghcr.io=https://g.example'], mirrorListen: '127.0.0.1:65535' }, env, {}), (err) => isKilnError(err, 'config.invalid') && /past 65535/.test(err.message));
});
