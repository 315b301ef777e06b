// Guest egress in real guests (TCG, the minimal image): what a guest with a network reaches and what it never
// does, and the per-connection forward to a host service (the mirror's path) with the network closed.
// Private and link-local destinations live in a network namespace this test creates (a veth pair whose far end
// holds 10.213.7.2, 10.213.7.3 and 169.254.169.254); no outside address is ever touched.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createServer, type Server } from 'node:net';
import { randomBytes } from 'node:crypto';
import { makeImageStore } from '../../src/image/store.ts';
import { egressProblem, egressVmNames } from '../../src/vm/egress.ts';
import { detectCgroups } from '../../src/vm/cgroups.ts';
import { makeQemuDriver } from '../../src/vm/qemu-driver.ts';
import type { VmSpec } from '../../src/vm/driver.ts';
import { assertNoLeaks, ensureImage, makeTestDataDir, SHARED_DIR } from '../support/kiln.ts';
import { startTestNetns, type TestNetns } from '../support/netns.ts';
import { readFileSync } from 'node:fs';
import { pino } from 'pino';
import { makeStoreImageResolver } from '../../src/agent/images.ts';
import { startHarness, jobReaches } from '../server/harness.ts';
import { makeApiClient } from '../support/test-client.ts';

const problem = egressProblem(detectCgroups().v2Root, readFileSync('/proc/mounts', 'utf8')) ?? (spawnSync('socat', ['-V']).status === 0 ? undefined : 'socat is missing');
const skip = problem ? `guest egress cannot be filtered here: ${problem}` : false;

const BLOCKED_PRIVATE = '10.213.7.2';
const ALLOWED = '10.213.7.3';
const METADATA = '169.254.169.254';
const data = makeTestDataDir();
let net: TestNetns | undefined;
let hostService: Server;
let hostPort = 0;
let parallelSeen = 0;

before(async () => {
  if (skip) return;
  // A host loopback service: answers after a short pause, so overlapping requests really overlap.
  hostService = createServer((s) => {
    parallelSeen++;
    s.once('data', () => setTimeout(() => s.end('HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nhost-loopback-secret\n'), 300));
    s.on('error', () => undefined);
  });
  await new Promise<void>((r) => hostService.listen(0, '127.0.0.1', r));
  hostPort = (hostService.address() as { port: number }).port;
  net = await startTestNetns('10.213.7', [METADATA], Object.fromEntries([BLOCKED_PRIVATE, ALLOWED, METADATA].map((a) => [a, `answer-from-${a}\n`])));
});

after(() => {
  hostService?.close();
  net?.close();
  data.cleanup();
});

async function runGuest(
  script: string,
  extra: Partial<VmSpec>,
  allow: string[] = [],
  warm = false,
): Promise<{ out: string; err: string; exit: number | undefined; start: 'warm' | 'cold' | undefined }> {
  const driver = makeQemuDriver({ dataDir: data.dir, egress: { allow }, ...(warm ? { snapshots: {} } : {}) });
  const ref = makeImageStore(SHARED_DIR).toRef(ensureImage('amd64'));
  let out = '';
  let err = '';
  const vm = await driver.start(
    {
      id: `eg-${randomBytes(4).toString('hex')}`,
      arch: 'amd64',
      cpus: 1,
      memoryBytes: 256 * 1024 * 1024,
      diskBytes: 64 * 1024 * 1024,
      image: ref,
      job: { command: ['sh', '-c', script], env: {} },
      timeoutMs: 240_000,
      ...extra,
    },
    { stdout: (b) => (out += b.toString()), stderr: (b) => (err += b.toString()) },
  );
  const r = await vm.done;
  assert.deepEqual(egressVmNames().names.filter((n) => n.startsWith(vm.id)), [], 'the VM left no egress chain behind');
  return { out, err, exit: r.outcome === 'exited' ? r.exitCode : undefined, start: r.timings.start };
}

/** A guest-side probe: prints "<name> ok <body>" or "<name> refused". */
const probe = (name: string, url: string) => `if b=$(timeout 20 wget -q -O - ${url} 2>/dev/null); then echo "${name} ok $b"; else echo "${name} refused"; fi`;

void test('a guest with a network reaches what the allowlist opens, never the host loopback, private or link-local addresses', { skip, timeout: 300_000 }, async () => {
  const seenBefore = parallelSeen;
  const r = await runGuest(
    [
      probe('loopback', `http://10.0.2.2:${hostPort}/`),
      probe('private', `http://${BLOCKED_PRIVATE}/`),
      probe('metadata', `http://${METADATA}/latest/meta-data/`),
      probe('allowed', `http://${ALLOWED}/`),
    ].join('; '),
    { network: 'user' },
    [`${ALLOWED}/32`],
  );
  assert.equal(r.exit, 0, r.out + r.err);
  assert.match(r.out, /^loopback refused$/m);
  assert.match(r.out, /^private refused$/m);
  assert.match(r.out, /^metadata refused$/m);
  assert.match(r.out, new RegExp(`^allowed ok answer-from-${ALLOWED.replace(/\./g, '\\.')}$`, 'm'));
  assert.equal(parallelSeen, seenBefore, 'the host loopback service saw no connection');
  assertNoLeaks(data.dir);
});

void test('a VM restored from a warm-start snapshot gets its egress chain and its NIC configured like a booted one', { skip, timeout: 400_000 }, async () => {
  const seenBefore = parallelSeen;
  const r = await runGuest(
    [
      `ip -4 addr show eth0 | grep -q 10.0.2.15 && echo nic configured`,
      probe('loopback', `http://10.0.2.2:${hostPort}/`),
      probe('private', `http://${BLOCKED_PRIVATE}/`),
      probe('allowed', `http://${ALLOWED}/`),
    ].join('; '),
    { network: 'user' },
    [`${ALLOWED}/32`],
    true,
  );
  assert.equal(r.start, 'warm', 'the VM was restored, not booted');
  assert.equal(r.exit, 0, r.out + r.err);
  assert.match(r.out, /^nic configured$/m);
  assert.match(r.out, /^loopback refused$/m);
  assert.match(r.out, /^private refused$/m);
  assert.match(r.out, new RegExp(`^allowed ok answer-from-${ALLOWED.replace(/\./g, '\\.')}$`, 'm'));
  assert.equal(parallelSeen, seenBefore, 'the host loopback service saw no connection');
  assertNoLeaks(data.dir);
});

void test('with the network closed, a forwarded host service is the one reachable address, one host connection per guest connection', { skip, timeout: 300_000 }, async () => {
  const seenBefore = parallelSeen;
  const r = await runGuest(
    [
      `for i in 1 2 3 4; do (${probe('fwd$i', 'http://10.0.2.100:5000/')}) & done; wait`,
      probe('loopback', `http://10.0.2.2:${hostPort}/`),
      probe('allowed', `http://${ALLOWED}/`),
    ].join('; '),
    { forwards: [{ guestAddr: '10.0.2.100', guestPort: 5000, hostPort }] },
    [],
    true,
  );
  // Forwards restore warm (docs/network.md): the per-connection forwards below are the restored QEMU's own.
  assert.equal(r.start, 'warm', 'a VM with forwards is restored like any other');
  assert.equal(r.exit, 0, r.out + r.err);
  for (const i of [1, 2, 3, 4]) assert.match(r.out, new RegExp(`^fwd${i} ok host-loopback-secret$`, 'm'), r.out);
  assert.match(r.out, /^loopback refused$/m);
  assert.match(r.out, /^allowed refused$/m, 'a closed network opens nothing, allowlist or not');
  assert.equal(parallelSeen - seenBefore, 4, 'each guest connection had its own host connection');
  assertNoLeaks(data.dir);
});

void test("the server's allowlist reaches a fleet VM: a tenant's list opens its guests' egress, another tenant's guests stay closed", { skip, timeout: 600_000 }, async () => {
  const seenBefore = parallelSeen;
  const h = await startHarness('pglite');
  try {
    await h.addAgent('egress-vm-host', {}, {
      driver: makeQemuDriver({ dataDir: data.dir, logger: pino({ level: 'silent' }) }),
      images: makeStoreImageResolver(SHARED_DIR),
    });
    const put = await fetch(`${h.url}/v1/egress/tenants/alice`, {
      method: 'PUT',
      headers: { authorization: `Bearer ${h.admin}`, 'content-type': 'application/json' },
      body: JSON.stringify({ allow: [`${ALLOWED}/32`] }),
    });
    assert.equal(put.status, 200, await put.text());
    const tenant = async (name: string) =>
      makeApiClient({ server: h.url, token: (await h.client.request<{ secret: string }>('POST', '/v1/tokens', { name: `${name}-op`, role: 'operator', tenant: name })).secret });
    const digest = ensureImage('amd64').digest;
    const script = [probe('allowed', `http://${ALLOWED}/`), probe('loopback', `http://10.0.2.2:${hostPort}/`)].join('; ');
    const submit = (c: Awaited<ReturnType<typeof tenant>>) =>
      c.request<{ id: number }>('POST', '/v1/jobs', { command: ['sh', '-c', script], network: 'user', image: digest, memory: '256M', disk: '64M', timeout: '240s' });
    const alice = await submit(await tenant('alice'));
    const bob = await submit(await tenant('bob'));
    for (const id of [alice.id, bob.id]) await jobReaches(h, id, ['succeeded', 'failed', 'lost', 'timed_out'], 540_000);
    // The stored log (NDJSON, output in base64), decoded.
    const logOf = async (id: number) =>
      (await (await fetch(`${h.url}/v1/jobs/${id}/logs`, { headers: { authorization: `Bearer ${h.admin}` } })).text())
        .split('\n')
        .filter((l) => l.trim() !== '')
        .map((l) => JSON.parse(l) as { data?: string })
        .map((l) => (l.data ? Buffer.from(l.data, 'base64').toString() : ''))
        .join('');
    const a = await logOf(alice.id);
    const b = await logOf(bob.id);
    assert.match(a, new RegExp(`allowed ok answer-from-${ALLOWED.replace(/\./g, '\\.')}`), a);
    assert.match(a, /loopback refused/, a);
    assert.match(b, /allowed refused/, b);
    assert.match(b, /loopback refused/, b);
    assert.equal(parallelSeen, seenBefore, 'the host loopback service saw no connection');
  } finally {
    await h.close();
  }
  assertNoLeaks(data.dir);
});
