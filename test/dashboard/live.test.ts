/** The live feed coalesces a burst into one delta per tick, bounded, and forgets a viewer that leaves. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { ServerEventBus } from '../../src/server/events.ts';
import { makeLiveHub, type LiveDelta } from '../../src/server/dashboard/live.ts';

test('a burst of 1,000 job changes reaches a viewer as one bounded delta; a closed viewer is dropped', async () => {
  const events = new ServerEventBus();
  const hub = makeLiveHub({ events }, 50);
  const server = createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    hub.add(res, undefined);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const ac = new AbortController();
  try {
    const res = await fetch(`http://127.0.0.1:${(server.address() as AddressInfo).port}/`, { signal: ac.signal });
    const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
    let buf = '';
    const next = async (): Promise<{ event: string; data: string }> => {
      for (;;) {
        const end = buf.indexOf('\n\n');
        if (end >= 0) {
          const block = buf.slice(0, end);
          buf = buf.slice(end + 2);
          if (block.startsWith(':')) continue;
          const event = /^event: (.*)$/m.exec(block)?.[1] ?? '';
          return { event, data: /^data: (.*)$/m.exec(block)?.[1] ?? '' };
        }
        const { value, done } = await reader.read();
        if (done) throw new Error('stream ended');
        buf += value;
      }
    };
    assert.equal((await next()).event, 'hello');
    assert.equal(hub.clients, 1);
    for (let i = 1; i <= 1000; i++) events.emit('job.state', { job: { id: i, tenant: 't', attempt: 1 }, from: 'queued', to: 'placed' });
    events.emit('job.state', { job: { id: 1, tenant: 't', attempt: 1 }, from: 'placed', to: 'running' });
    for (let i = 0; i < 3; i++) events.emit('job.submitted', { job: { id: 2000 + i, tenant: 't' } as never });
    events.emit('host.state', { hostId: 1, name: 'h1', state: 'draining' });
    const m = await next();
    assert.equal(m.event, 'delta');
    const d = JSON.parse(m.data) as LiveDelta;
    assert.equal(d.jobs.length, 500, 'at most 500 jobs per delta');
    assert.equal(d.moreJobs, true);
    assert.equal(d.jobs.find((j) => j.id === 1)?.state, 'running', 'the latest state of a job wins');
    assert.equal(d.submitted, 3);
    assert.deepEqual(d.hosts, [{ id: 1, name: 'h1', state: 'draining', event: 'state' }]);
    // the next change comes in the next delta, alone
    events.emit('job.logs', { jobId: 7, tenant: 't' });
    const d2 = JSON.parse((await next()).data) as LiveDelta;
    assert.deepEqual([d2.jobs.length, d2.submitted, d2.logs], [0, 0, [7]]);
    ac.abort();
    for (let i = 0; i < 200 && hub.clients > 0; i++) await new Promise((r) => setTimeout(r, 10));
    assert.equal(hub.clients, 0);
  } finally {
    hub.close();
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  }
});

test('each viewer hears only its tenant (GitHub changes only the GitHub tenant); an admin hears all', async () => {
  const events = new ServerEventBus();
  const gh = new Set<() => void>();
  const hub = makeLiveHub({ events, githubTenant: 'github', onGitHub: (fn) => (gh.add(fn), () => gh.delete(fn)) }, 50);
  const scopes = new Map<string, string | undefined>([['/alice', 'alice'], ['/bob', 'bob'], ['/github', 'github'], ['/admin', undefined]]);
  const server = createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    hub.add(res, scopes.get(req.url ?? ''));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const ac = new AbortController();
  const got = new Map<string, LiveDelta[]>();
  try {
    const port = (server.address() as AddressInfo).port;
    const readers = [...scopes.keys()].map(async (path) => {
      const res = await fetch(`http://127.0.0.1:${port}${path}`, { signal: ac.signal });
      const list: LiveDelta[] = [];
      got.set(path, list);
      let buf = '';
      try {
        for await (const chunk of res.body!.pipeThrough(new TextDecoderStream())) {
          buf += chunk;
          for (let end = buf.indexOf('\n\n'); end >= 0; end = buf.indexOf('\n\n')) {
            const block = buf.slice(0, end);
            buf = buf.slice(end + 2);
            const data = /^event: delta\ndata: (.*)$/m.exec(block)?.[1];
            if (data) list.push(JSON.parse(data) as LiveDelta);
          }
        }
      } catch {
        // aborted at the end
      }
    });
    for (let i = 0; i < 200 && hub.clients < 4; i++) await new Promise((r) => setTimeout(r, 10));
    assert.equal(hub.clients, 4);
    events.emit('job.submitted', { job: { id: 1, tenant: 'alice' } as never });
    events.emit('job.state', { job: { id: 1, tenant: 'alice', attempt: 1 }, from: 'queued', to: 'cancelled' });
    events.emit('job.logs', { jobId: 1, tenant: 'alice' });
    events.emit('job.state', { job: { id: 2, tenant: 'bob', attempt: 1 }, from: 'queued', to: 'placed' });
    for (const fn of gh) fn();
    for (let i = 0; i < 300 && !(got.get('/admin')?.length && got.get('/alice')?.length && got.get('/bob')?.length && got.get('/github')?.length); i++) await new Promise((r) => setTimeout(r, 10));
    // one more tick, so a delta that should not have come would have come
    await new Promise((r) => setTimeout(r, 120));
    const flat = (p: string) => {
      const ds = got.get(p) ?? [];
      return { jobs: ds.flatMap((d) => d.jobs.map((j) => j.id)), submitted: ds.reduce((n, d) => n + d.submitted, 0), logs: ds.flatMap((d) => d.logs), github: ds.some((d) => d.github) };
    };
    assert.deepEqual(flat('/alice'), { jobs: [1], submitted: 1, logs: [1], github: false });
    assert.deepEqual(flat('/bob'), { jobs: [2], submitted: 0, logs: [], github: false });
    assert.deepEqual(flat('/github'), { jobs: [], submitted: 0, logs: [], github: true });
    assert.deepEqual(flat('/admin'), { jobs: [1, 2], submitted: 1, logs: [1], github: true });
    ac.abort();
    await Promise.all(readers);
  } finally {
    ac.abort();
    hub.close();
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  }
});
