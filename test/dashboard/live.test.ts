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
    hub.add(res);
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
    for (let i = 0; i < 3; i++) events.emit('job.submitted', { job: { id: 2000 + i } as never });
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
    events.emit('job.logs', { jobId: 7 });
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
