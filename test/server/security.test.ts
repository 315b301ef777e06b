// Security defects of issue 17, each as a test that failed on the code before the fix (docs/security.md):
// tenancy, write-only secrets, strict input, poison jobs.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { storeKinds } from '../store/test-stores.ts';
import { startHarness, jobReaches, type Harness } from './harness.ts';
import { makeApiClient, type ApiClient } from '../support/test-client.ts';
import type { Job } from '../../src/core/job.ts';
import { makeAgent, type Agent, type AgentOptions } from '../../src/agent/agent.ts';
import { memoryImageResolver } from '../../src/agent/images.ts';
import { makeMemoryDriver } from '../../src/vm/memory-driver.ts';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { once } from 'node:events';
import { quietLogger } from './harness.ts';
import { findHost } from '../../src/store/hosts.ts';
import { insertJobs, MAX_JOB_ATTEMPTS } from '../../src/store/jobs.ts';

const GiB = 1024 ** 3;

async function raw(h: Harness, method: string, path: string, body?: string, token = h.admin): Promise<{ status: number; json: { error?: { code: string; message: string } } & Record<string, unknown> }> {
  const res = await fetch(`${h.url}${path}`, {
    method,
    headers: { authorization: `Bearer ${token}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
    ...(body !== undefined ? { body } : {}),
  });
  const text = await res.text();
  let json: Record<string, unknown> = {};
  try {
    json = JSON.parse(text) as Record<string, unknown>;
  } catch {
    json = { text };
  }
  return { status: res.status, json: json as { error?: { code: string; message: string } } & Record<string, unknown> };
}

async function logText(url: string, token: string, id: number): Promise<string> {
  const res = await fetch(`${url}/v1/jobs/${id}/logs`, { headers: { authorization: `Bearer ${token}` } });
  return (await res.text())
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as { data?: string })
    .flatMap((c) => (c.data ? [Buffer.from(c.data, 'base64').toString()] : []))
    .join('');
}

for (const { kind, skip } of storeKinds()) {
  void describe(`security on ${kind}`, { skip }, () => {
    let h: Harness;
    let alice: ApiClient;
    let aliceRead: ApiClient;
    let bob: ApiClient;
    let bobToken: string;
    let aliceSecret: string;
    before(async () => {
      h = await startHarness(kind);
      await h.addAgent('amd-1', { arches: ['amd64'], cpus: 4, memoryBytes: 8 * GiB });
      const mk = async (name: string, role: string, tenant: string) => (await h.client.request<{ secret: string }>('POST', '/v1/tokens', { name, role, tenant })).secret;
      aliceSecret = await mk('alice', 'operator', 'alice');
      alice = makeApiClient({ server: h.url, token: aliceSecret });
      aliceRead = makeApiClient({ server: h.url, token: await mk('alice-ro', 'read-only', 'alice') });
      bobToken = await mk('bob', 'operator', 'bob');
      bob = makeApiClient({ server: h.url, token: bobToken });
    });
    after(async () => {
      await h?.close();
    });

    void test('defect 2: a tenant sees and touches only its own jobs, logs and usage; admins see all', async () => {
      const a = await alice.request<Job>('POST', '/v1/jobs', { command: ['sh', '-c', 'echo alice-output; sleep 30'], cpus: 1, memory: '1G' });
      const b = await bob.request<Job>('POST', '/v1/jobs', { command: ['sh', '-c', 'echo bob-output; sleep 30'], cpus: 1, memory: '1G' });
      assert.equal(a.tenant, 'alice');
      await jobReaches(h, b.id, ['running']);
      // Listing: each tenant its own; asking for another tenant is refused; an admin sees both.
      const aliceList = (await alice.request<{ jobs: Job[] }>('GET', '/v1/jobs?limit=1000')).jobs;
      assert.deepEqual([...new Set(aliceList.map((j) => j.tenant))], ['alice']);
      await assert.rejects(alice.request('GET', '/v1/jobs?tenant=bob'), (e: Error & { code?: string }) => e.code === 'auth.forbidden');
      const all = (await h.client.request<{ jobs: Job[] }>('GET', '/v1/jobs?limit=1000')).jobs;
      assert.ok(all.some((j) => j.id === a.id) && all.some((j) => j.id === b.id));
      // One job, its logs, cancelling it: another tenant's job is answered like a missing one.
      for (const c of [alice, aliceRead]) {
        await assert.rejects(c.request('GET', `/v1/jobs/${b.id}`), (e: Error & { code?: string }) => e.code === 'job.not_found');
        await assert.rejects(c.request('GET', `/v1/jobs/${b.id}/logs`), (e: Error & { code?: string }) => e.code === 'job.not_found');
      }
      await assert.rejects(alice.request('POST', `/v1/jobs/${b.id}/cancel`), (e: Error & { code?: string }) => e.code === 'job.not_found');
      assert.equal((await h.client.request<Job>('GET', `/v1/jobs/${b.id}`)).state, 'running');
      // Usage: a tenant sees its own row only.
      const tenants = (await alice.request<{ tenants: { name: string }[] }>('GET', '/v1/tenants')).tenants.map((t) => t.name);
      assert.deepEqual(tenants, ['alice']);
      assert.ok((await h.client.request<{ tenants: { name: string }[] }>('GET', '/v1/tenants')).tenants.some((t) => t.name === 'bob'));
      // A tenant cancels its own.
      await bob.request('POST', `/v1/jobs/${b.id}/cancel`);
      await alice.request('POST', `/v1/jobs/${a.id}/cancel`);
      await jobReaches(h, b.id, ['cancelled']);
      await jobReaches(h, a.id, ['cancelled']);
      // Reports (the dashboard's data) are confined the same way: usage, the CSV, the queue.
      const usage = await alice.request<{ series: { key: string }[]; slowest: { tenant: string }[] }>('GET', '/v1/reports/usage?by=tenant');
      assert.deepEqual([...new Set(usage.series.map((x) => x.key))], ['alice']);
      assert.ok(usage.slowest.every((x) => x.tenant === 'alice'), JSON.stringify(usage.slowest));
      const adminUsage = await h.client.request<{ series: { key: string }[] }>('GET', '/v1/reports/usage?by=tenant');
      assert.ok(adminUsage.series.some((x) => x.key === 'bob'));
      const csv = await (await fetch(`${h.url}/v1/reports/usage.csv`, { headers: { authorization: `Bearer ${aliceSecret}` } })).text();
      const rows = csv.trim().split('\n').slice(1);
      assert.ok(rows.length > 0 && rows.every((r) => r.split(',')[1] === 'alice'), csv);
      const waiting = await bob.request<Job>('POST', '/v1/jobs', { command: ['true'], cpus: 256, memory: '1G' });
      const queue = await alice.request<{ jobs: { tenant: string }[]; groups: { tenant: string }[] }>('GET', '/v1/queue');
      assert.ok([...queue.jobs, ...queue.groups].every((x) => x.tenant === 'alice'), JSON.stringify(queue));
      assert.ok((await h.client.request<{ jobs: { id: number }[] }>('GET', '/v1/queue')).jobs.some((x) => x.id === waiting.id));
      await bob.request('POST', `/v1/jobs/${waiting.id}/cancel`);
    });

    void test('defect 2: secret env values are write-only: never in an answer, masked in the stored log', async () => {
      const secret = 'hunter2-very-secret';
      const j = await alice.request<Job>('POST', '/v1/jobs', {
        command: ['sh', '-c', 'printenv TOKEN PLAIN; echo "token is" $TOKEN'],
        env: { PLAIN: 'visible' },
        secretEnv: { TOKEN: secret },
      });
      assert.equal(j.env.TOKEN, '[secret]');
      assert.equal(j.env.PLAIN, 'visible');
      await jobReaches(h, j.id, ['succeeded', 'failed']);
      const answers = [
        await alice.request('GET', `/v1/jobs/${j.id}`),
        await alice.request('GET', '/v1/jobs?limit=1000'),
        await h.client.request('GET', `/v1/jobs/${j.id}`),
        await alice.request('POST', `/v1/jobs/${j.id}/cancel`).catch((e: unknown) => e),
      ];
      for (const a of answers) assert.ok(!JSON.stringify(a).includes(secret), 'an answer holds the secret');
      const log = await logText(h.url, h.admin, j.id);
      assert.ok(log.includes('visible'), log);
      assert.ok(!log.includes(secret), `stored log holds the secret: ${log}`);
      assert.match(log, /\*\*\*/);
      // A name in both env and secretEnv is refused.
      await assert.rejects(alice.request('POST', '/v1/jobs', { command: ['true'], env: { A: '1' }, secretEnv: { A: '2' } }), /both env and secretEnv/);
    });

    void test('defect 6: no coercion, env names and values checked, bounded numbers; nothing stored on a 400', async () => {
      const before = (await h.client.request<{ jobs: Job[] }>('GET', '/v1/jobs?limit=1000')).jobs.length;
      const bad: unknown[] = [
        { command: 'true' },
        { command: ['true'], cpus: '2' },
        { command: ['true'], priority: '1' },
        { command: ['true'], env: { 'A=B': 'x' } },
        { command: ['true'], env: { '': 'x' } },
        { command: ['true'], env: { 'A\nB': 'x' } },
        { command: ['true'], env: { '1A': 'x' } },
        { command: ['true'], env: { A: { nested: true } } },
        { command: ['true'], env: { A: 1 } },
        { command: ['true'], timeout: 0 },
        { command: ['true'], timeout: 1 },
        { command: ['true'], timeout: '0s' },
        { command: ['true'], memory: 2 ** 63 },
        { command: ['true'], network: 1 },
      ];
      for (const body of bad) {
        const r = await raw(h, 'POST', '/v1/jobs', JSON.stringify(body));
        assert.equal(r.status, 400, `${JSON.stringify(body)} → ${r.status} ${JSON.stringify(r.json)}`);
        assert.ok(r.json.error?.code, JSON.stringify(r.json));
      }
      const after = (await h.client.request<{ jobs: Job[] }>('GET', '/v1/jobs?limit=1000')).jobs.length;
      assert.equal(after, before);
    });

    void test('defect 8: NUL, lone surrogates, huge numbers and %00 in paths are 400s, never 500s', async () => {
      const cases: [string, string, string | undefined][] = [
        ['POST', '/v1/jobs', '{"command":["echo","a\\u0000b"]}'],
        ['POST', '/v1/jobs', '{"command":["echo","\\ud800"]}'],
        ['POST', '/v1/jobs', '{"command":["echo"],"env":{"A":"\\udc00x"}}'],
        ['POST', '/v1/jobs', '{"command":["echo"],"cwd":"/a\\u0000"}'],
        ['POST', '/v1/jobs/batch', '{"jobs":[{"command":["echo","\\u0000"]}]}'],
        ['GET', '/v1/jobs/9223372036854775808', undefined],
        ['GET', '/v1/jobs/9223372036854775807', undefined],
        ['GET', '/v1/jobs?before=9223372036854775808', undefined],
        ['GET', '/v1/jobs?host=99999999999999999999', undefined],
        ['GET', '/v1/jobs/1/logs?after=9223372036854775808', undefined],
        ['GET', '/v1/hosts/a%00b', undefined],
        ['POST', '/v1/hosts/a%00b/cordon', undefined],
        ['PUT', '/v1/tenants/a%00b', '{"maxConcurrent":1}'],
        ['PUT', '/v1/tenants/x', '{"maxConcurrent":2147483648}'],
        ['GET', '/v1/jobs?tenant=a%00', undefined],
        ['DELETE', '/v1/tokens/9223372036854775808', undefined],
        ['POST', '/v1/tokens', '{"name":"a\\u0000","role":"operator"}'],
      ];
      for (const [method, path, body] of cases) {
        const r = await raw(h, method, path, body);
        assert.ok(r.status >= 400 && r.status < 500, `${method} ${path} ${body ?? ''} → ${r.status} ${JSON.stringify(r.json)}`);
      }
    });

    void test('defect 6: a job no agent will launch fails after bounded attempts instead of requeueing for ever', async () => {
      const bootFailures = async () => Number(/^kiln_job_boot_failures_total (\d+)/m.exec(await (await fetch(`${h.url}/metrics`)).text())?.[1] ?? NaN);
      const failuresBefore = await bootFailures();
      // Stored directly, as an older server accepted it (timeout 0 and an object env are refused at submit now).
      const [poison] = await insertJobs(h.store.db, [
        { tenant: 'default', requirements: { arch: 'amd64', cpus: 1, memoryBytes: GiB, diskBytes: GiB, hostLabels: [] }, labels: [], image: 'default', command: ['true'], env: {}, timeoutMs: 0, network: 'none', priority: 0 },
      ]);
      h.server.scheduler.kick();
      await jobReaches(h, poison!.id, ['failed'], 60_000);
      const j = await h.client.request<Job>('GET', `/v1/jobs/${poison!.id}`);
      assert.equal(j.error?.code, 'job.too_many_attempts');
      assert.equal(j.attempt, MAX_JOB_ATTEMPTS);
      // Lost before it started, five times: not a VM boot failure in the figures.
      assert.equal(await bootFailures(), failuresBefore);
      // The host is fine afterwards.
      const ok = await h.client.request<Job>('POST', '/v1/jobs', { command: ['true'] });
      await jobReaches(h, ok.id, ['succeeded']);
    });

    void test('defect 6: a tenant limit of 0 keeps its jobs queued', async () => {
      await h.client.request('PUT', '/v1/tenants/frozen', { maxConcurrent: 0 });
      const j = await h.client.request<Job>('POST', '/v1/jobs', { command: ['true'], tenant: 'frozen' });
      const other = await h.client.request<Job>('POST', '/v1/jobs', { command: ['true'], tenant: 'thawed' });
      await jobReaches(h, other.id, ['succeeded']);
      await h.server.scheduler.pass();
      assert.equal((await h.client.request<Job>('GET', `/v1/jobs/${j.id}`)).state, 'queued');
      await h.client.request('POST', `/v1/jobs/${j.id}/cancel`);
    });
  });
}

/** An agent that is expected to be refused: resolves with the refusal's code. */
async function refused(h: Harness, more: Partial<AgentOptions> & { name: string }): Promise<string> {
  const a = makeAgent({ servers: [h.url], token: h.agentToken, driver: makeMemoryDriver({ cpus: 4 }), images: memoryImageResolver, logger: quietLogger(), minBackoffMs: 50, maxBackoffMs: 200, ...more });
  const rejected = once(a.events, 'rejected') as Promise<[{ code: string; message: string }]>;
  await a.start();
  const [r] = await rejected;
  await a.stop();
  return r.code;
}

for (const { kind, skip } of storeKinds()) {
  void describe(`host identity on ${kind}`, { skip }, () => {
    let h: Harness;
    const dirs: string[] = [];
    const tmp = () => {
      const d = mkdtempSync(join(tmpdir(), 'kiln-sec-'));
      dirs.push(d);
      return d;
    };
    before(async () => {
      h = await startHarness(kind);
    });
    after(async () => {
      await h?.close();
      for (const d of dirs) rmSync(d, { recursive: true, force: true });
    });

    void test('defect 3: a hello with a connected host\'s name does not replace it; the host\'s own restart does', async () => {
      const dir = tmp();
      const first = await h.addAgent('bound-1', { cpus: 4 }, { credentialDir: dir });
      const hostId = h.server.registry.links.size > 0 ? [...h.server.registry.links.values()].find((l) => l.name === 'bound-1')!.hostId : 0;
      const job = await h.client.request<Job>('POST', '/v1/jobs', { command: ['sleep', '30'], cpus: 1, memory: '1G' });
      await jobReaches(h, job.id, ['running']);
      // An impostor (same agent token, same name, no credential) is refused; the real host keeps its job.
      assert.equal(await refused(h, { name: 'bound-1' }), 'host.identity_refused');
      assert.ok(h.server.registry.get(hostId), 'the real host is still connected');
      assert.equal((await h.client.request<Job>('GET', `/v1/jobs/${job.id}`)).state, 'running');
      const cred = statSync(join(dir, 'bound-1.host-credential'));
      assert.equal(cred.mode & 0o777, 0o600);
      // The real host restarting (its credential on disk) is itself again.
      await first.stop();
      const again = await h.addAgent('bound-1', { cpus: 4 }, { credentialDir: dir });
      assert.ok(again.isConnected());
      await h.client.request('POST', `/v1/jobs/${job.id}/cancel`);
      // An operator's removal frees the name for another machine.
      await again.stop();
      await h.client.request('DELETE', '/v1/hosts/bound-1?force=true');
      const other = await h.addAgent('bound-1', { cpus: 2 }, { credentialDir: tmp() });
      assert.ok(other.isConnected());
      await other.stop();
    });

    void test('defect 3: capacity claims are capped by policy and by what the host first reported', async () => {
      assert.equal(await refused(h, { name: 'huge', driver: makeMemoryDriver({ cpus: 4 }), cpus: 4000 }), 'host.capacity_refused');
      const dir = tmp();
      const a = await h.addAgent('grows', { cpus: 4 }, { credentialDir: dir });
      await a.stop();
      assert.equal(await refused(h, { name: 'grows', driver: makeMemoryDriver({ cpus: 64 }), credentialDir: dir }), 'host.capacity_refused');
      const smaller = await h.addAgent('grows', { cpus: 2 }, { credentialDir: dir });
      assert.ok(smaller.isConnected());
      await smaller.stop();
    });

    void test('defect 3: revoking an agent token closes its live connection', async () => {
      const { token, secret } = await h.client.request<{ token: { id: number }; secret: string }>('POST', '/v1/tokens', { name: 'doomed', role: 'agent' });
      const a: Agent = makeAgent({ servers: [h.url], token: secret, name: 'doomed-host', driver: makeMemoryDriver({ cpus: 2 }), images: memoryImageResolver, logger: quietLogger(), minBackoffMs: 50, maxBackoffMs: 200 });
      const c = a.connected();
      await a.start();
      await c;
      const gone = h.server.events.waitFor('host.disconnected', (e) => e.name === 'doomed-host', 10_000);
      const rejected = once(a.events, 'rejected');
      await h.client.request('DELETE', `/v1/tokens/${token.id}`);
      await gone;
      await rejected;
      assert.equal(a.isConnected(), false);
      await a.stop();
    });

    void test('defect 3: host references are unambiguous (all-digit names refused, digits are ids)', async () => {
      assert.equal(await refused(h, { name: '1' }), 'host.bad_name');
      const a = await h.addAgent('named-host', { cpus: 2 });
      const link = [...h.server.registry.links.values()].find((l) => l.name === 'named-host')!;
      const byId = await findHost(h.store.db, String(link.hostId));
      assert.equal(byId?.name, 'named-host');
      assert.equal(await findHost(h.store.db, '99999999999999999999'), undefined);
      await a.stop();
    });
  });
}
