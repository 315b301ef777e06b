// Issue 17: kiln's own TLS. A CA and a server certificate made by openssl here; `kiln server --tls-cert
// --tls-key` serves https and wss; the CLI (--ca or KILN_CA) and an agent (ca) trust the private CA; without
// it they refuse the server; plain http to the port gets nothing; the key never reaches the start-up log.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort, killAll, runKilnCommand, spawnKiln } from '../agent/processes.ts';
import { startServerProcess } from './process-server.ts';
import { makeAgent } from '../../src/agent/agent.ts';
import { memoryImageResolver } from '../../src/agent/images.ts';
import { makeMemoryDriver } from '../../src/vm/memory-driver.ts';
import { quietLogger } from './harness.ts';

after(killAll);

function makePki(dir: string): { ca: string; cert: string; key: string } {
  const f = (n: string) => join(dir, n);
  const ssl = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
  ssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', f('ca.key'), '-out', f('ca.pem'), '-subj', '/CN=kiln test CA', '-days', '2');
  ssl('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', f('server.key'), '-out', f('server.csr'), '-subj', '/CN=kiln test server');
  writeFileSync(f('ext.cnf'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n');
  ssl('x509', '-req', '-in', f('server.csr'), '-CA', f('ca.pem'), '-CAkey', f('ca.key'), '-CAcreateserial', '-out', f('server.pem'), '-days', '2', '-extfile', f('ext.cnf'));
  return { ca: f('ca.pem'), cert: f('server.pem'), key: f('server.key') };
}

test('kiln server --tls-cert/--tls-key: the CLI and an agent trust a private CA with --ca; without it they refuse', { timeout: 120_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'kiln-tls-'));
  const pki = makePki(dir);
  const ca = readFileSync(pki.ca);
  const s = await startServerProcess('pglite', { KILN_LOG_LEVEL: 'info' }, ['--tls-cert', pki.cert, '--tls-key', pki.key], ca);
  try {
    assert.match(s.url, /^https:/);
    // The CLI: with --ca, with KILN_CA, and without (refused: the certificate is not trusted).
    const withFlag = await runKilnCommand(['jobs', 'ls', '--server', s.url, '--ca', pki.ca, '--token', s.admin], {});
    assert.equal(withFlag.code, 0, withFlag.stderr);
    const withEnv = await runKilnCommand(['hosts', 'ls', '--server', s.url, '--token', s.admin], { KILN_CA: pki.ca });
    assert.equal(withEnv.code, 0, withEnv.stderr);
    const without = await runKilnCommand(['jobs', 'ls', '--server', s.url, '--token', s.admin], { KILN_CA: '' });
    assert.notEqual(without.code, 0);
    assert.match(without.stderr, /cannot reach the kiln server/);
    // Plain http to the TLS port gets no answer.
    await assert.rejects(fetch(s.url.replace('https:', 'http:') + '/healthz'));
    // An agent over wss, trusting the CA.
    const { secret } = await s.client.request<{ secret: string }>('POST', '/v1/tokens', { name: 'agents', role: 'agent' });
    const real = makeAgent({ servers: [s.url], ca, token: secret, name: 'tls-host', driver: makeMemoryDriver({}), images: memoryImageResolver, logger: quietLogger(), minBackoffMs: 50, maxBackoffMs: 200 });
    const connected = real.connected(20_000);
    await real.start();
    await connected;
    const hosts = await s.client.request<{ hosts: { name: string; state: string }[] }>('GET', '/v1/hosts');
    assert.deepEqual(hosts.hosts.map((h) => [h.name, h.state]), [['tls-host', 'online']]);
    await real.stop();
    // An agent without the CA does not connect.
    const untrusting = makeAgent({ servers: [s.url], token: secret, name: 'tls-host-2', driver: makeMemoryDriver({}), images: memoryImageResolver, logger: quietLogger(), minBackoffMs: 50, maxBackoffMs: 200 });
    await untrusting.start();
    await assert.rejects(untrusting.connected(2_000));
    await untrusting.stop();
    // The key is never logged (the start-up config is).
    const keyLine = readFileSync(pki.key, 'utf8').split('\n')[1]!;
    assert.match(s.proc.output(), /kiln server starting/);
    assert.ok(!s.proc.output().includes(keyLine), 'the TLS key reached the log');
  } finally {
    await s.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('kiln up --tls-cert/--tls-key: its local agent connects over wss and the CLI runs a job with --ca', { timeout: 180_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'kiln-tls-up-'));
  const pki = makePki(dir);
  const data = join(dir, 'data');
  const port = await freePort();
  const up = spawnKiln(['up', '--driver', 'memory', '--listen', `127.0.0.1:${port}`, '--data-dir', data, '--tls-cert', pki.cert, '--tls-key', pki.key, '--ca', pki.ca]);
  try {
    await up.waitForOutput(/kiln is up at https:\/\/127\.0\.0\.1:\d+ with one local agent/);
    const url = `https://127.0.0.1:${port}`;
    const env = { KILN_SERVER: url, KILN_DATA_DIR: data, KILN_TOKEN: '', KILN_CA: pki.ca };
    // The local agent is online: it reached its own server over wss and trusted the CA.
    const hosts = await runKilnCommand(['hosts', 'ls'], env);
    assert.equal(hosts.code, 0, hosts.stderr);
    assert.match(hosts.stdout, /online/);
    const job = await runKilnCommand(['jobs', 'submit', '--', 'sh', '-c', 'echo over-tls'], env);
    assert.equal(job.code, 0, job.stderr);
    assert.equal(job.stdout, 'over-tls\n');
    // Without the CA the CLI refuses the server; plain http to the port gets no answer.
    const without = await runKilnCommand(['jobs', 'ls'], { ...env, KILN_CA: '' });
    assert.notEqual(without.code, 0);
    assert.match(without.stderr, /cannot reach the kiln server/);
    await assert.rejects(fetch(`http://127.0.0.1:${port}/healthz`));
    const keyLine = readFileSync(pki.key, 'utf8').split('\n')[1]!;
    assert.ok(!up.output().includes(keyLine), 'the TLS key reached the log');
  } finally {
    await up.kill();
    rmSync(dir, { recursive: true, force: true });
  }
});
