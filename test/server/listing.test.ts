// Issue 17, defect 7: one listing cannot produce an unbounded answer. Jobs and hosts are read a page at a time
// and cut at a byte cap, with a cursor for the rest; GitHub's lists are cut at the same cap.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { storeKinds } from '../store/test-stores.ts';
import { startHarness, type Harness } from './harness.ts';
import { capByBytes, LIST_BYTE_CAP, pageByBytes } from '../../src/server/http/listing.ts';

void test('capByBytes keeps whole items under the cap (always the first); pageByBytes stops at the limit or the cap', async () => {
  const items = Array.from({ length: 10 }, (_, i) => ({ i, pad: 'x'.repeat(100) }));
  const one = Buffer.byteLength(JSON.stringify(items[0])) + 1;
  assert.deepEqual(capByBytes(items, one * 3).items.length, 3);
  assert.equal(capByBytes(items, one * 3).cut, true);
  assert.equal(capByBytes(items, 1).items.length, 1, 'the first item always');
  assert.equal(capByBytes(items).cut, false);
  const rows = Array.from({ length: 50 }, (_, i) => 50 - i); // ids, newest first
  let reads = 0;
  const fetchPage = async (before: number | undefined, n: number) => (reads++, rows.filter((r) => before === undefined || r < before).slice(0, n));
  const byLimit = await pageByBytes({ fetchPage, cursorOf: (r) => r, toJson: (r) => ({ id: r }), limit: 7, pageSize: 3 });
  assert.deepEqual(byLimit.items.map((x) => x.id), [50, 49, 48, 47, 46, 45, 44]);
  assert.equal(byLimit.next, 44);
  const all = await pageByBytes({ fetchPage, cursorOf: (r) => r, toJson: (r) => ({ id: r }), limit: 1000, pageSize: 16 });
  assert.equal(all.items.length, 50);
  assert.equal(all.next, null);
  reads = 0;
  const byCap = await pageByBytes({ fetchPage, cursorOf: (r) => r, toJson: (r) => ({ id: r, pad: 'y'.repeat(1000) }), limit: 1000, cap: 5000, pageSize: 2 });
  assert.equal(byCap.items.length, 4);
  assert.equal(byCap.next, 47);
  assert.ok(reads <= 3, `read ${reads} pages for 4 items`);
});

for (const { kind, skip } of storeKinds()) {
  void describe(`bounded listings on ${kind}`, { skip }, () => {
    let h: Harness;
    before(async () => {
      h = await startHarness(kind);
    });
    after(async () => {
      await h?.close();
    });

    void test('GET /v1/jobs of large jobs: at most the byte cap per answer; `next` walks the rest, each job once', { timeout: 60_000 }, async () => {
      // 7 values of 99,000 characters (the most one may have): ~700 KB per job
      const big = Object.fromEntries(Array.from({ length: 7 }, (_, i) => [`BIG${i}`, 'v'.repeat(99_000)]));
      const ids: number[] = [];
      for (let i = 0; i < 14; i++) ids.push((await h.client.request<{ id: number }>('POST', '/v1/jobs', { command: ['true'], env: big, cpus: 256 })).id);
      const seen: number[] = [];
      let before: number | null | undefined;
      let answers = 0;
      do {
        const res = await fetch(`${h.url}/v1/jobs?limit=1000${before ? `&before=${before}` : ''}`, { headers: { authorization: `Bearer ${h.admin}` } });
        const text = await res.text();
        assert.equal(res.status, 200);
        assert.ok(text.length <= LIST_BYTE_CAP + 1024, `an answer of ${text.length} bytes`);
        const body = JSON.parse(text) as { jobs: { id: number }[]; next: number | null };
        seen.push(...body.jobs.map((j) => j.id));
        before = body.next;
        answers++;
      } while (before);
      assert.ok(answers >= 3, `${answers} answers for 14 × 700 KiB`);
      assert.deepEqual(seen, [...ids].reverse(), 'every job once, newest first');
      // A small listing that fits is not cut: next is null.
      const small = await h.client.request<{ jobs: unknown[]; next: number | null }>('GET', `/v1/jobs?limit=2&before=${ids[1]}`);
      assert.deepEqual([small.jobs.length, small.next], [1, null]);
      const limited = await h.client.request<{ jobs: { id: number }[]; next: number | null }>('GET', '/v1/jobs?limit=2');
      assert.deepEqual([limited.jobs.map((j) => j.id), limited.next], [[ids[13], ids[12]], ids[12]]);
    });

    void test('GET /v1/hosts pages by name with limit and after', async () => {
      for (const n of ['h-a', 'h-b', 'h-c']) await h.addAgent(n);
      const p1 = await h.client.request<{ hosts: { name: string }[]; next: string | null }>('GET', '/v1/hosts?limit=2');
      assert.deepEqual([p1.hosts.map((x) => x.name), p1.next], [['h-a', 'h-b'], 'h-b']);
      const p2 = await h.client.request<{ hosts: { name: string }[]; next: string | null }>('GET', `/v1/hosts?limit=2&after=${p1.next}`);
      assert.deepEqual([p2.hosts.map((x) => x.name), p2.next], [['h-c'], null]);
      await assert.rejects(h.client.request('GET', '/v1/hosts?limit=0'), (e: Error & { code?: string }) => e.code === 'request.invalid');
    });
  });
}
