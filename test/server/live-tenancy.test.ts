// Issue 17: the dashboard's live feed (/v1/live) tells each reader only its own tenant's job ids and states;
// an admin's token hears every tenant. Against a real `kiln server` process on each store.
import { describe, test, after } from 'node:test';
import assert from 'node:assert/strict';
import { storeKinds } from '../store/test-stores.ts';
import { killAll } from '../agent/processes.ts';
import { startServerProcess } from './process-server.ts';
import { makeApiClient } from '../support/test-client.ts';
import type { LiveDelta } from '../../src/server/dashboard/live.ts';

after(killAll);

/** Reads a live feed in the background, collecting its deltas. */
function readFeed(url: string, token: string, signal: AbortSignal): { deltas: LiveDelta[]; hello: Promise<void> } {
  const deltas: LiveDelta[] = [];
  let helloed!: () => void;
  const hello = new Promise<void>((r) => (helloed = r));
  void (async () => {
    const res = await fetch(`${url}/v1/live`, { headers: { authorization: `Bearer ${token}` }, signal });
    assert.equal(res.status, 200);
    let buf = '';
    for await (const chunk of res.body!.pipeThrough(new TextDecoderStream())) {
      buf += chunk;
      for (let end = buf.indexOf('\n\n'); end >= 0; end = buf.indexOf('\n\n')) {
        const block = buf.slice(0, end);
        buf = buf.slice(end + 2);
        if (block.startsWith('event: hello')) helloed();
        const data = /^event: delta\ndata: (.*)$/m.exec(block)?.[1];
        if (data) deltas.push(JSON.parse(data) as LiveDelta);
      }
    }
  })().catch(() => undefined);
  return { deltas, hello };
}

for (const { kind, skip } of storeKinds()) {
  void describe(`live feed tenancy on ${kind}`, { skip }, () => {
    void test("two tenants' readers see only their own jobs; an admin sees both", { timeout: 90_000 }, async () => {
      const s = await startServerProcess(kind);
      const ac = new AbortController();
      try {
        const aliceTok = await s.token('alice-view', 'viewer', 'alice');
        const bobTok = await s.token('bob-view', 'viewer', 'bob');
        const alice = makeApiClient({ server: s.url, token: await s.token('alice-op', 'operator', 'alice') });
        const bob = makeApiClient({ server: s.url, token: await s.token('bob-op', 'operator', 'bob') });
        const feeds = { alice: readFeed(s.url, aliceTok, ac.signal), bob: readFeed(s.url, bobTok, ac.signal), admin: readFeed(s.url, s.admin, ac.signal) };
        await Promise.all(Object.values(feeds).map((f) => f.hello));
        // No host is connected: the jobs stay queued until cancelled (queued → cancelled is a state change).
        const a = await alice.request<{ id: number }>('POST', '/v1/jobs', { command: ['true'] });
        const b = await bob.request<{ id: number }>('POST', '/v1/jobs', { command: ['true'] });
        await alice.request('POST', `/v1/jobs/${a.id}/cancel`);
        await bob.request('POST', `/v1/jobs/${b.id}/cancel`);
        const ids = (f: { deltas: LiveDelta[] }) => [...new Set(f.deltas.flatMap((d) => d.jobs.map((j) => j.id)))].sort((x, y) => x - y);
        const submitted = (f: { deltas: LiveDelta[] }) => f.deltas.reduce((n, d) => n + d.submitted, 0);
        const deadline = Date.now() + 20_000;
        while (Date.now() < deadline && !(ids(feeds.admin).length === 2 && ids(feeds.alice).length === 1 && ids(feeds.bob).length === 1)) await new Promise((r) => setTimeout(r, 50));
        // Markers instead of a sleep: one more job per tenant, submitted after everything above. A feed's
        // deltas arrive in order, so once a reader has its marker, any leaked event of the earlier jobs would
        // already have reached it.
        const ma = await alice.request<{ id: number }>('POST', '/v1/jobs', { command: ['true'] });
        const mb = await bob.request<{ id: number }>('POST', '/v1/jobs', { command: ['true'] });
        await alice.request('POST', `/v1/jobs/${ma.id}/cancel`);
        await bob.request('POST', `/v1/jobs/${mb.id}/cancel`);
        const seen = () => ids(feeds.alice).includes(ma.id) && ids(feeds.bob).includes(mb.id) && ids(feeds.admin).includes(ma.id) && ids(feeds.admin).includes(mb.id);
        while (Date.now() < deadline && !seen()) await new Promise((r) => setTimeout(r, 50));
        assert.ok(seen(), 'every reader got its marker');
        assert.deepEqual(ids(feeds.admin), [a.id, b.id, ma.id, mb.id].sort((x, y) => x - y));
        assert.deepEqual(ids(feeds.alice), [a.id, ma.id].sort((x, y) => x - y));
        assert.deepEqual(ids(feeds.bob), [b.id, mb.id].sort((x, y) => x - y));
        assert.deepEqual([submitted(feeds.alice), submitted(feeds.bob), submitted(feeds.admin)], [2, 2, 4]);
        for (const [who, f] of Object.entries(feeds)) {
          const tenants = new Set(f.deltas.flatMap((d) => d.jobs.map((j) => j.tenant)));
          if (who !== 'admin') assert.deepEqual([...tenants], [who], `${who} heard of another tenant`);
        }
      } finally {
        ac.abort();
        await s.close();
      }
    });
  });
}
