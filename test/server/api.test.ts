// The control plane end to end in one process: real HTTP, real WebSockets, real stores, memory-driver agents.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { storeKinds } from '../store/test-stores.ts';
import { startHarness, jobReaches, type Harness } from './harness.ts';
import { makeApiClient } from '../support/test-client.ts';
import { submitAndFollow } from '../../src/cli/submit.ts';
import { Writable } from 'node:stream';
import { once } from 'node:events';
import WebSocket from 'ws';
import { agentUrl } from '../../src/agent/agent.ts';
import type { Job } from '../../src/core/job.ts';

const GiB = 1024 ** 3;

function sink(): Writable & { text(): string; buf(): Buffer } {
  const parts: Buffer[] = [];
  const w = new Writable({
    write(chunk: Buffer, _enc, cb) {
      parts.push(Buffer.from(chunk));
      cb();
    },
  });
  return Object.assign(w, { text: () => Buffer.concat(parts).toString(), buf: () => Buffer.concat(parts) });
}

for (const { kind, skip } of storeKinds()) {
  void describe(`control plane API on ${kind}`, { skip }, () => {
    let h: Harness;
    before(async () => {
      h = await startHarness(kind);
      await h.addAgent('amd-1', { arches: ['amd64'], cpus: 4, memoryBytes: 8 * GiB });
      await h.addAgent('arm-1', { arches: ['arm64'], cpus: 4, memoryBytes: 8 * GiB }, { arch: 'arm64' });
    });
    after(async () => {
      await h?.close();
    });

    void test('submit, follow logs, exit code; stdout and stderr separate and in order', async () => {
      const out = sink();
      const err = sink();
      const r = await submitAndFollow(h.client, { command: ['sh', '-c', 'echo one; echo two >&2; echo three; exit 42'], cpus: 1, memory: '1G' }, { stdout: out, stderr: err });
      assert.equal(r.exitCode, 42);
      assert.equal(out.text(), 'one\nthree\n');
      assert.equal(err.text(), 'two\n');
      const job = await h.client.request<Job & { transitions: { state: string; at: string }[] }>('GET', `/v1/jobs/${r.job.id}`);
      assert.equal(job.state, 'failed');
      assert.equal(job.exitCode, 42);
      assert.deepEqual(job.transitions.map((t) => t.state).filter((s) => s !== 'booting' && s !== 'running'), ['queued', 'placed', 'failed']);
      assert.ok(job.transitions.every((t) => Date.parse(t.at) > 0));
    });

    void test('labels choose the architecture; the job runs on a host of that arch', async () => {
      const out = sink();
      const r = await submitAndFollow(h.client, { labels: ['kiln-arm64-2cpu-4gb'], command: ['uname', '-m'] }, { stdout: out, stderr: sink() });
      assert.equal(r.exitCode, 0);
      assert.equal(out.text(), 'aarch64\n');
      const hosts = await h.client.request<{ hosts: { id: number; name: string }[] }>('GET', '/v1/hosts');
      const job = await h.client.request<Job>('GET', `/v1/jobs/${r.job.id}`);
      assert.equal(hosts.hosts.find((x) => x.id === job.hostId)?.name, 'arm-1');
    });

    void test('unknown kiln labels and bad sizes are 400s naming the problem; nothing is queued', async () => {
      const before = await h.client.request<{ jobs: Job[] }>('GET', '/v1/jobs?limit=1000');
      await assert.rejects(h.client.request('POST', '/v1/jobs', { labels: ['kiln-huge'], command: ['true'] }), (e: Error & { code?: string }) => e.code === 'job.bad_request' && /kiln-huge/.test(e.message));
      await assert.rejects(h.client.request('POST', '/v1/jobs', { command: ['true'], memory: 'lots', timeout: 'soon' }), (e: Error) => /memory "lots"/.test(e.message) && /timeout "soon"/.test(e.message));
      await assert.rejects(h.client.request('POST', '/v1/jobs', { command: [] }), (e: Error & { code?: string }) => e.code === 'request.invalid');
      await assert.rejects(h.client.request('POST', '/v1/jobs', { command: ['true'], surprise: 1 }), (e: Error & { code?: string }) => e.code === 'request.invalid');
      const after = await h.client.request<{ jobs: Job[] }>('GET', '/v1/jobs?limit=1000');
      assert.equal(after.jobs.length, before.jobs.length);
    });

    void test('malformed and oversized bodies get clear 4xx answers', async () => {
      const post = (body: string, type = 'application/json') =>
        fetch(`${h.url}/v1/jobs`, { method: 'POST', headers: { authorization: `Bearer ${h.admin}`, 'content-type': type }, body });
      let res = await post('{"command": [');
      assert.equal(res.status, 400);
      assert.equal(((await res.json()) as { error: { code: string } }).error.code, 'request.bad_json');
      res = await post(JSON.stringify({ command: ['x'.repeat(2 * 1024 * 1024)] }));
      assert.equal(res.status, 413);
      assert.equal(((await res.json()) as { error: { code: string } }).error.code, 'request.too_large');
      res = await post('hello', 'text/plain');
      assert.equal(res.status, 415);
      res = await fetch(`${h.url}/v1/nope`);
      assert.equal(res.status, 404);
    });

    void test('auth: roles decide what a token may do; agent tokens cannot use the API', async () => {
      const { secret: ro } = await h.client.request<{ secret: string }>('POST', '/v1/tokens', { name: 'viewer', role: 'read-only' });
      const viewer = makeApiClient({ server: h.url, token: ro });
      await viewer.request('GET', '/v1/jobs');
      await assert.rejects(viewer.request('POST', '/v1/jobs', { command: ['true'] }), (e: Error & { code?: string }) => e.code === 'auth.forbidden');
      const { secret: op } = await h.client.request<{ secret: string }>('POST', '/v1/tokens', { name: 'ops', role: 'operator' });
      const operator = makeApiClient({ server: h.url, token: op });
      await assert.rejects(operator.request('POST', '/v1/tokens', { name: 'x', role: 'admin' }), (e: Error & { code?: string }) => e.code === 'auth.forbidden');
      const agentClient = makeApiClient({ server: h.url, token: h.agentToken });
      await assert.rejects(agentClient.request('GET', '/v1/jobs'), (e: Error & { code?: string }) => e.code === 'auth.forbidden');
      await assert.rejects(makeApiClient({ server: h.url, token: 'kiln_api_nope' }).request('GET', '/v1/jobs'), (e: Error & { code?: string }) => e.code === 'auth.invalid');
      await assert.rejects(makeApiClient({ server: h.url, token: undefined }).request('GET', '/v1/jobs'), (e: Error & { code?: string }) => e.code === 'auth.missing');
      // API tokens cannot open the agent connection
      const ws = new WebSocket(agentUrl(h.url), { headers: { authorization: `Bearer ${op}` } });
      const [, res] = (await once(ws, 'unexpected-response')) as [unknown, { statusCode: number }];
      assert.equal(res.statusCode, 403);
      ws.on('error', () => {});
      ws.terminate();
    });

    void test('cancel: a queued job at once, a running job by stopping its VM', async () => {
      const big = await h.client.request<Job>('POST', '/v1/jobs', { command: ['true'], cpus: 64 });
      const c1 = await h.client.request<Job>('POST', `/v1/jobs/${big.id}/cancel`);
      assert.equal(c1.state, 'cancelled');
      const running = await h.client.request<Job>('POST', '/v1/jobs', { command: ['sleep', 'infinity'], cpus: 1 });
      await jobReaches(h, running.id, ['running']);
      // The hosts listing counts it on its host, and only there.
      const placedOn = (await h.client.request<Job>('GET', `/v1/jobs/${running.id}`)).hostId;
      const listed = await h.client.request<{ hosts: { id: number; jobs: number; used: { cpus: number } }[] }>('GET', '/v1/hosts');
      for (const x of listed.hosts) assert.deepEqual([x.jobs, x.used.cpus], x.id === placedOn ? [1, 1] : [0, 0], `host ${x.id}`);
      await h.client.request('POST', `/v1/jobs/${running.id}/cancel`);
      await jobReaches(h, running.id, ['cancelled']);
    });

    void test('a job that runs past its timeout ends timed_out', async () => {
      const out = sink();
      const r = await submitAndFollow(h.client, { command: ['sh', '-c', 'echo start; sleep 60'], timeout: 300 }, { stdout: out, stderr: sink() });
      assert.equal(r.end.state, 'timed_out');
      assert.equal(r.exitCode, 124);
      assert.equal(out.text(), 'start\n');
    });

    void test('the stored log is capped and says so', async () => {
      const r = await submitAndFollow(h.client, { command: ['spew', String(20 * 1024 * 1024)] }, { stdout: sink(), stderr: sink() });
      assert.equal(r.exitCode, 0);
      assert.equal(r.end.logTruncated, true);
      const job = await h.client.request<Job>('GET', `/v1/jobs/${r.job.id}`);
      assert.equal(job.logBytes, 16 * 1024 * 1024);
    });

    void test('hosts: ls, cordon keeps jobs off, uncordon lets them back; OpenAPI and metrics are served', async () => {
      const hosts = await h.client.request<{ hosts: { name: string; state: string; arch: string }[] }>('GET', '/v1/hosts');
      assert.deepEqual(hosts.hosts.map((x) => `${x.name}:${x.state}:${x.arch}`).sort(), ['amd-1:online:amd64', 'arm-1:online:arm64']);
      await h.client.request('POST', '/v1/hosts/arm-1/cordon');
      const job = await h.client.request<Job>('POST', '/v1/jobs', { labels: ['kiln-arm64'], command: ['true'] });
      await h.server.scheduler.pass();
      assert.equal((await h.client.request<Job>('GET', `/v1/jobs/${job.id}`)).state, 'queued');
      await h.client.request('POST', '/v1/hosts/arm-1/uncordon');
      await jobReaches(h, job.id, ['succeeded']);
      const api = (await (await fetch(`${h.url}/openapi.json`)).json()) as { openapi: string; paths: Record<string, unknown> };
      assert.equal(api.openapi, '3.1.0');
      assert.ok(api.paths['/v1/jobs/{id}/logs'] && api.paths['/v1/hosts/{ref}/drain']);
      const metrics = await (await fetch(`${h.url}/metrics`)).text();
      assert.match(metrics, /kiln_placements_total \d+/);
      assert.match(metrics, /kiln_hosts_connected 2/);
    });
  });
}
