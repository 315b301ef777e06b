// Idempotency-Key on POST /v1/jobs: a submission whose answer was cut (the request reached the server, the
// answer never came back) and retried with the same key is one job; the same key with another body is a
// 422; on both stores. The cut is real: a TCP proxy in front of the server drops the first answer.
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { startHarness } from './harness.ts';
import { storeKinds } from '../store/test-stores.ts';
import { makeApiClient, submitJob } from '../support/test-client.ts';
import { KilnError } from '../../src/core/errors.ts';
import type { Job } from '../../src/core/job.ts';

/** Forwards to `target`; the first `cut` connections are closed as soon as the server starts answering. */
async function cuttingProxy(target: URL, cut: number): Promise<{ url: string; cutsMade(): number; close(): Promise<void> }> {
  let cuts = 0;
  const sockets = new Set<Socket>();
  const server: Server = createServer((client) => {
    sockets.add(client);
    const up = connect(Number(target.port), target.hostname);
    sockets.add(up);
    const cutThis = cuts < cut;
    if (cutThis) cuts++;
    client.pipe(up);
    up.on('data', (d: Buffer) => {
      if (cutThis) {
        client.resetAndDestroy();
        up.destroy();
      } else client.write(d);
    });
    up.on('end', () => client.end());
    for (const s of [client, up]) {
      s.on('error', () => undefined);
      s.on('close', () => sockets.delete(s));
    }
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as { port: number };
  return {
    url: `http://127.0.0.1:${port}`,
    cutsMade: () => cuts,
    async close() {
      for (const s of sockets) s.destroy();
      server.close();
      await once(server, 'close');
    },
  };
}

for (const { kind, skip } of storeKinds()) {
  void describe(`Idempotency-Key on ${kind}`, { skip }, () => {
    void test('a submission retried with the same key after a cut connection is one job; another body with that key is refused', async () => {
      const h = await startHarness(kind);
      const proxy = await cuttingProxy(new URL(h.url), 1);
      try {
        const viaProxy = makeApiClient({ server: proxy.url, token: h.admin });
        const body = { command: ['echo', 'once'], cpus: 1 };
        const job = await submitJob(viaProxy, body, { key: 'retry-me-1', backoffMs: 20 });
        assert.equal(proxy.cutsMade(), 1, 'the first answer was cut');
        const all = (await h.client.request<{ jobs: Job[] }>('GET', '/v1/jobs?limit=100')).jobs;
        assert.deepEqual(all.map((j) => j.id), [job.id], 'one job, though the server got the request twice');
        // The same key again: the same job, marked as a replay.
        const res = await fetch(`${h.url}/v1/jobs`, {
          method: 'POST',
          headers: { authorization: `Bearer ${h.admin}`, 'content-type': 'application/json', 'idempotency-key': 'retry-me-1' },
          body: JSON.stringify({ cpus: 1, command: ['echo', 'once'] }),
        });
        assert.equal(res.status, 201);
        assert.equal(res.headers.get('idempotent-replayed'), 'true');
        assert.equal(((await res.json()) as Job).id, job.id);
        // The same key with a different body: a clear 422, and nothing stored.
        await assert.rejects(
          h.client.request('POST', '/v1/jobs', { command: ['echo', 'twice'] }, { 'idempotency-key': 'retry-me-1' }),
          (e: unknown) => e instanceof KilnError && e.code === 'job.idempotency_key_reused' && (e.details as { status: number }).status === 422,
        );
        // A bad key is a 400; without a key every request is a new job.
        await assert.rejects(
          h.client.request('POST', '/v1/jobs', body, { 'idempotency-key': 'has space' }),
          (e: unknown) => e instanceof KilnError && e.code === 'request.bad_idempotency_key',
        );
        await h.client.request('POST', '/v1/jobs', body);
        await h.client.request('POST', '/v1/jobs', body);
        assert.equal((await h.client.request<{ jobs: Job[] }>('GET', '/v1/jobs?limit=100')).jobs.length, 3);
      } finally {
        await proxy.close();
        await h.close();
      }
    });

    void test('concurrent requests with one key make one job', async () => {
      const h = await startHarness(kind);
      try {
        const body = { command: ['true'] };
        const jobs = await Promise.all(Array.from({ length: 8 }, () => h.client.request<Job>('POST', '/v1/jobs', body, { 'idempotency-key': 'same-for-all' })));
        assert.equal(new Set(jobs.map((j) => j.id)).size, 1);
        assert.equal((await h.client.request<{ jobs: Job[] }>('GET', '/v1/jobs?limit=100')).jobs.length, 1);
      } finally {
        await h.close();
      }
    });
  });
}
