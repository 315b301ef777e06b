/**
 * Host-to-host cache transfer (docs/caches.md, "Fetching a cache from a peer"), through a real server on each
 * store, with agents that keep real cache stores (files under their own data directories; the memory driver's
 * `cache-fill` writes real data into a job's cache overlay, and commits run qemu-img and e2fsck):
 * - a version committed on host A is fetched by host B for a job placed there: the same bytes and record, the
 *   checksum its commit recorded, in the job's cache outcome, the usage CSV and /metrics; the relay never held
 *   more than its window although the image is many windows long;
 * - a copy corrupted on A's disk is refused by the checksum: B's job runs on an empty cache, with one line
 *   saying why, and nothing of the copy is left on B;
 * - a peer too slow for the fetch bound: B's job starts on an empty cache, and the peer stops sending;
 * - the peer (a `kiln agent` process) SIGKILLed mid-transfer: B's job runs on its older version, with the reason;
 * - forged and unsolicited transfer messages from an agent are refused, and malformed ones are protocol errors;
 * - chunks are binary frames: a peer's malformed frame closes its connection with the code of its fault and is
 *   never relayed, and a binary frame before an accepted hello is refused;
 * - an agent of another transfer version is refused, and the reason names both versions.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { closeSync, existsSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sql } from 'kysely';
import WebSocket from 'ws';
import { CACHE_TRANSFER_VERSION, MAX_CACHE_CHUNK_BYTES, PROTOCOL_VERSION, decodeCacheChunkFrame, encodeCacheChunkFrame } from '../../src/core/agent-protocol.ts';
import type { Job } from '../../src/core/job.ts';
import { KILN_VERSION } from '../../src/core/version.ts';
import { getJob } from '../../src/store/jobs.ts';
import { cacheId, makeCacheStore } from '../../src/vm/cache-store.ts';
import { killAll, runKilnCommand, spawnBuiltKiln } from '../agent/processes.ts';
import { storeKinds } from '../store/test-stores.ts';
import { jobReaches, startHarness, type Harness } from './harness.ts';

const MiB = 1024 * 1024;
const FINAL = ['succeeded', 'failed', 'lost', 'cancelled', 'timed_out'] as const;
const dirs: string[] = [];
const tempDir = () => {
  const d = mkdtempSync(join(tmpdir(), 'kiln-xfer-'));
  dirs.push(d);
  return d;
};
after(async () => {
  await killAll();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

const versionFile = (dataDir: string, key: string, v: string) => join(dataDir, 'caches', cacheId(key), 'versions', `${v}.raw`);
const fileSha = (p: string) => createHash('sha256').update(readFileSync(p)).digest('hex');

async function until<T>(what: string, f: () => T | Promise<T>, timeoutMs = 30_000): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** A promise that must settle within `ms` (a close that never comes fails the test with what it waited for, not its timeout). */
async function within<T>(what: string, p: Promise<T>, ms = 20_000): Promise<T> {
  let t: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<never>((_, reject) => (t = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms)))]);
  } finally {
    clearTimeout(t);
  }
}

async function submit(h: Harness, command: string, site: string, cache: { key: string; write?: boolean; size?: string }): Promise<number> {
  const j = await h.client.request<Job>('POST', '/v1/jobs', { command: ['sh', '-c', command], labels: [site], cache });
  return j.id;
}
async function finished(h: Harness, id: number): Promise<Job> {
  await jobReaches(h, id, [...FINAL], 120_000);
  return h.client.request<Job>('GET', `/v1/jobs/${id}`);
}
async function logs(h: Harness, id: number): Promise<string> {
  let text = '';
  await h.client.logs(id, { follow: false, onChunk: (_s, d) => void (text += d.toString()) });
  return text;
}
const metrics = async (h: Harness) => (await fetch(`${h.url}/metrics`, { headers: { authorization: `Bearer ${h.admin}` } })).text();
const relayedBytes = async (h: Harness) => Number(/^kiln_cache_transfer_bytes_total (\d+)$/m.exec(await metrics(h))?.[1] ?? 0);
const linkOf = (h: Harness, host: string) => [...h.server.registry.links.values()].find((l) => l.name === host);
/** Waits until the host has told the server it holds `version` of `key` (its host.status after the job). */
const reported = (h: Harness, host: string, key: string, version: string) =>
  until(`${host} to report ${key}@${version}`, () => [...h.server.registry.links.values()].some((l) => l.name === host && l.cacheVersions?.get(key) === version));

/**
 * Host A (label site-a, its own cache store in `dir`) commits a version of default/deps with `fillMiB` MiB
 * written into a cache of `size`, and reports it; returns the version id.
 */
async function committedOnA(h: Harness, dir: string, fillMiB: number, size: string, transfer?: { holdSendAfterChunks: number }): Promise<string> {
  await h.addAgent('host-a', { cacheWrites: true }, { labels: ['site-a'], caches: makeCacheStore(dir), ...(transfer ? { cacheTransfer: transfer } : {}) });
  const w = await finished(h, await submit(h, `cache-fill ${fillMiB}`, 'site-a', { key: 'deps', write: true, size }));
  const v = w.cacheOutcome?.committed?.id;
  assert.ok(v, JSON.stringify(w.cacheOutcome));
  await reported(h, 'host-a', 'default/deps', v);
  return v;
}

/** A chunk frame laid out by hand (u32 big-endian header length, header bytes, data): for frames the encoder would not make. */
const rawFrame = (header: string | object, data: Buffer, headerLength?: number) => {
  const hb = Buffer.from(typeof header === 'string' ? header : JSON.stringify(header));
  const len = Buffer.alloc(4);
  len.writeUInt32BE(headerLength ?? hb.length);
  return Buffer.concat([len, hb, data]);
};
const chunkFrame = (transferId: string, seq: number, offset: number, data: Buffer) => encodeCacheChunkFrame({ type: 'cache.chunk', tv: CACHE_TRANSFER_VERSION, transferId, seq, offset }, data);

/**
 * A hand-made agent connection (what a compromised host could send), with the messages it receives (a chunk
 * frame as `{type: 'cache.chunk', ...header, bytes}`). `hello`: fields added to (or replacing) its hello's.
 */
async function fakeAgent(h: Harness, name: string, labels: string[], size: { cpus: number; memoryBytes: number } = { cpus: 2, memoryBytes: 4 * 1024 ** 3 }, hello: Record<string, unknown> = {}) {
  const ws = new WebSocket(`${h.url.replace(/^http/, 'ws')}/v1/agent/connect`, { headers: { authorization: `Bearer ${h.agentToken}` } });
  const got: { type: string; [k: string]: unknown }[] = [];
  const waiters = new Set<() => void>();
  ws.on('message', (d, isBinary) => {
    if (isBinary) {
      const c = decodeCacheChunkFrame(d as Buffer);
      got.push({ ...c.header, bytes: c.data.length });
    } else got.push(JSON.parse(String(d)) as { type: string });
    for (const w of [...waiters]) w();
  });
  const closed = once(ws, 'close');
  await once(ws, 'open');
  const send = (m: unknown) => ws.send(JSON.stringify(m));
  const sendBinary = (b: Buffer) => ws.send(b, { binary: true });
  const next = (pred: (m: { type: string; [k: string]: unknown }) => boolean, timeoutMs = 10_000) =>
    new Promise<{ type: string; [k: string]: unknown }>((resolve, reject) => {
      const check = () => {
        const m = got.find(pred);
        if (m) {
          waiters.delete(check);
          clearTimeout(t);
          resolve(m);
        }
      };
      const t = setTimeout(() => (waiters.delete(check), reject(new Error(`the fake agent got no matching message; got ${got.map((x) => (x.type === 'error' ? JSON.stringify(x) : x.type)).join(', ')}`))), timeoutMs);
      waiters.add(check);
      check();
    });
  send({
    type: 'hello',
    protocol: PROTOCOL_VERSION,
    host: { name, arch: 'amd64', ...size, diskBytes: 50 * 1024 ** 3, accel: 'tcg', labels, driver: 'memory', agentVersion: KILN_VERSION },
    running: [],
    finished: [],
    cacheTransfer: CACHE_TRANSFER_VERSION,
    ...hello,
  });
  await next((m) => m.type === 'welcome');
  return { ws, got, send, sendBinary, next, closed, close: () => ws.close() };
}

for (const { kind, skip } of storeKinds()) {
  test(`${kind}: a version committed on host A is fetched by host B (same bytes and record, checksum checked, window-bounded relay); a corrupted copy is refused`, { skip, timeout: 240_000 }, async () => {
    const h = await startHarness(kind, { cacheRelay: { windowChunks: 2, stallMs: 20_000 } });
    const dirA = tempDir();
    const dirB = tempDir();
    try {
      await h.addAgent('host-a', { cacheWrites: true }, { labels: ['site-a'], caches: makeCacheStore(dirA) });
      await h.addAgent('host-b', { cacheWrites: true }, { labels: ['site-b'], caches: makeCacheStore(dirB) });
      const key = 'default/deps';
      const transfers: { outcome?: string; to: string; bytes?: number; peakInFlightBytes?: number; reason?: string }[] = [];
      h.server.events.on('cache.transfer', (e) => void (e.outcome && transfers.push(e)));

      const w = await finished(h, await submit(h, 'cache-fill 12; echo wrote', 'site-a', { key: 'deps', write: true, size: '64M' }));
      assert.equal(w.state, 'succeeded', await logs(h, w.id));
      const committed = w.cacheOutcome?.committed;
      assert.ok(committed?.sha256, 'the commit recorded a checksum in the job result');
      assert.equal(w.cacheOutcome?.hit, false);
      assert.equal(w.cacheOutcome?.fetch?.outcome, 'none', 'no peer had the cache');
      const v = committed.id;
      const fileA = versionFile(dirA, key, v);
      const shaA = fileSha(fileA);
      await reported(h, 'host-a', key, v);

      // A's copy corrupted on disk (a byte inside the data cache-fill wrote, at 5/8 of the disk): B refuses it.
      const at = 40 * MiB + 4096;
      const fd = openSync(fileA, 'r+');
      const orig = Buffer.alloc(1);
      try {
        assert.equal(readFileSync(fileA).subarray(at, at + 1).readUInt8(0), 17);
        orig.writeUInt8(17);
        writeSync(fd, Buffer.from([0x99]), 0, 1, at);
      } finally {
        closeSync(fd);
      }
      const bad = await finished(h, await submit(h, 'echo ran', 'site-b', { key: 'deps' }));
      assert.equal(bad.state, 'succeeded', 'a failed fetch never fails the job');
      assert.equal(bad.cacheOutcome?.fetch?.outcome, 'checksum');
      assert.equal(bad.cacheOutcome?.hit, false, 'it ran on an empty cache');
      assert.match(await logs(h, bad.id), new RegExp(`kiln: could not fetch cache version ${v} from host host-a \\(checksum: .*does not match its recorded checksum.*\\); the job starts on an empty cache\\n`));
      assert.equal(makeCacheStore(dirB).inspect(key)?.current, undefined, 'nothing of the refused copy became a version on B');
      assert.deepEqual(readdirSync(join(dirB, 'caches', cacheId(key), 'versions')), []);
      assert.deepEqual(readdirSync(join(dirB, 'caches', cacheId(key), 'leases')), [], 'and no half-received file is left');

      // Repaired: B's next job fetches it.
      const fd2 = openSync(fileA, 'r+');
      writeSync(fd2, orig, 0, 1, at);
      closeSync(fd2);
      assert.equal(fileSha(fileA), shaA);
      const r = await finished(h, await submit(h, 'echo read', 'site-b', { key: 'deps' }));
      assert.equal(r.state, 'succeeded');
      const f = r.cacheOutcome?.fetch;
      assert.equal(f?.outcome, 'fetched', JSON.stringify(r.cacheOutcome));
      assert.equal(f.from, 'host-a');
      assert.equal(f.version, v);
      assert.ok((f.bytes ?? 0) >= 12 * MiB, `bytes fetched: ${f.bytes}`);
      assert.equal(r.cacheOutcome?.hit, true, 'the job started from the fetched version');
      assert.equal(r.cacheOutcome?.version, v);
      const infoB = makeCacheStore(dirB).inspect(key);
      assert.equal(infoB?.current?.id, v);
      assert.equal(infoB.current.sha256, committed.sha256);
      assert.equal(infoB.current.jobId, String(w.id), 'the same writer record');
      assert.equal(infoB.current.by, makeCacheStore(dirA).inspect(key)?.current?.by);
      assert.equal(infoB.current.fetchedFrom, 'host-a');
      assert.equal(fileSha(versionFile(dirB, key, v)), shaA, 'byte for byte the same image');
      assert.equal(readFileSync(versionFile(dirB, key, v)).length, 64 * MiB);
      const inspect = await runKilnCommand(['caches', 'inspect', key, '--data-dir', dirB], {});
      assert.equal(inspect.code, 0, inspect.stderr);
      assert.match(inspect.stdout, new RegExp(`${v} \\*.*\\b${w.id}\\b.*host-a\\s+${committed.sha256.slice(0, 12)}`), inspect.stdout);

      // The relay held at most its window (2 chunks of 512 KiB) of a 12+ MiB transfer.
      const ok = transfers.find((t) => t.outcome === 'fetched');
      assert.ok(ok && (ok.bytes ?? 0) >= 12 * MiB);
      assert.ok((ok.peakInFlightBytes ?? Infinity) <= 2 * 512 * 1024, `peak in flight ${ok.peakInFlightBytes}`);
      assert.ok((ok.peakInFlightBytes ?? 0) > 0);
      assert.equal(h.server.registry.links.size, 2);

      const text = await metrics(h);
      assert.match(text, /^kiln_cache_transfers_total\{outcome="fetched"\} 1$/m);
      assert.match(text, /^kiln_cache_transfers_total\{outcome="checksum"\} 1$/m);
      const relayed = Number(/^kiln_cache_transfer_bytes_total (\d+)$/m.exec(text)?.[1]);
      assert.ok(relayed >= 24 * MiB, `bytes relayed: ${relayed}`);
      assert.match(text, /^kiln_cache_relay_bytes 0$/m);
      assert.match(text, /^kiln_cache_hits_total 1$/m);
      assert.match(text, /^kiln_cache_misses_total 2$/m);

      // Two jobs of the cache placed at once on a third host: one transfer, both start from the version.
      const dirC = tempDir();
      await h.addAgent('host-c', {}, { labels: ['site-c'], caches: makeCacheStore(dirC) });
      const toC = () => transfers.filter((t) => t.to === 'host-c');
      const [c1, c2] = await Promise.all([submit(h, 'echo one', 'site-c', { key: 'deps' }), submit(h, 'echo two', 'site-c', { key: 'deps' })]);
      const both = [await finished(h, c1!), await finished(h, c2!)];
      assert.deepEqual(both.map((j) => [j.state, j.cacheOutcome?.hit, j.cacheOutcome?.version]), [['succeeded', true, v], ['succeeded', true, v]]);
      assert.deepEqual(both.map((j) => j.cacheOutcome?.fetch?.outcome).sort(), ['fetched', 'none']);
      assert.equal(toC().length, 1, 'one transfer to host-c');

      // Usage records carry each job's cache: hit or miss, the fetch, bytes fetched and committed.
      const csv = await (await fetch(`${h.url}/v1/reports/usage.csv`, { headers: { authorization: `Bearer ${h.admin}` } })).text();
      const [head, ...rows] = csv.trim().split('\n');
      const cols = head!.split(',');
      const row = (id: number) => Object.fromEntries(rows.find((x) => x.startsWith(`${id},`))!.split(',').map((c, i) => [cols[i], c]));
      assert.deepEqual([row(w.id).cache, row(w.id).cache_hit, row(w.id).cache_fetch, row(w.id).cache_committed_bytes], [key, 'miss', 'none', String(committed.bytes)]);
      assert.deepEqual([row(bad.id).cache_hit, row(bad.id).cache_fetch], ['miss', 'checksum']);
      assert.deepEqual([row(r.id).cache_hit, row(r.id).cache_fetch, row(r.id).cache_fetched_bytes], ['hit', 'fetched', String(f.bytes)]);
    } finally {
      await h.close();
    }
  });

  test(`${kind}: a peer too slow for the fetch bound: the job starts on an empty cache, the peer stops sending and lets go of the version`, { skip, timeout: 120_000 }, async () => {
    const h = await startHarness(kind, { cacheRelay: { windowChunks: 4, stallMs: 60_000 } });
    const dirA = tempDir();
    const dirB = tempDir();
    try {
      const key = 'default/deps';
      await h.addAgent('host-a', { cacheWrites: true }, { labels: ['site-a'], caches: makeCacheStore(dirA), cacheTransfer: { holdSendAfterChunks: 2 } });
      await h.addAgent('host-b', {}, { labels: ['site-b'], caches: makeCacheStore(dirB), cacheTransfer: { fetchTimeoutMs: 10_000 } });
      const w = await finished(h, await submit(h, 'cache-fill 4', 'site-a', { key: 'deps', write: true, size: '64M' }));
      const v = w.cacheOutcome?.committed?.id;
      assert.ok(v);
      await reported(h, 'host-a', key, v);
      // A job cancelled while its fetch waits on the peer ends at once, not at the fetch bound.
      const started = new Promise<void>((resolve) => h.server.events.on('cache.transfer', (e) => void (!e.outcome && e.to === 'host-b' && resolve())));
      const c = await submit(h, 'echo never', 'site-b', { key: 'deps' });
      await started;
      const tc = Date.now();
      await h.client.request('POST', `/v1/jobs/${c}/cancel`);
      assert.equal((await finished(h, c)).state, 'cancelled');
      assert.ok(Date.now() - tc < 8000, `the cancel took ${Date.now() - tc} ms`);
      await until('the cancelled fetch to be counted', async () => /^kiln_cache_transfers_total\{outcome="failed"\} 1$/m.test(await metrics(h)));
      const t0 = Date.now();
      const r = await finished(h, await submit(h, 'echo read', 'site-b', { key: 'deps' }));
      assert.equal(r.state, 'succeeded');
      assert.equal(r.cacheOutcome?.fetch?.outcome, 'timeout');
      assert.match(r.cacheOutcome?.fetch?.reason ?? '', /the fetch took longer than 10 s/);
      assert.equal(r.cacheOutcome?.hit, false);
      assert.ok(Date.now() - t0 < 30_000, 'the job waited for the bound, not for the peer');
      assert.match(await logs(h, r.id), /kiln: could not fetch cache version .* from host host-a \(timeout: the fetch took longer than 10 s\); the job starts on an empty cache/);
      assert.match(await metrics(h), /^kiln_cache_transfers_total\{outcome="timeout"\} 1$/m);
      // The relay told the peer to stop both times: its hold on the version is released.
      await until('host-a to release the version it was sending', () => readdirSync(join(dirA, 'caches', cacheId(key), 'leases')).length === 0);
      assert.equal(makeCacheStore(dirB).inspect(key)?.current, undefined);
    } finally {
      await h.close();
    }
  });

  test(`${kind}: the peer SIGKILLed mid-transfer leaves the job on its host's older version; forged and unsolicited transfer messages are refused`, { skip, timeout: 240_000 }, async () => {
    const h = await startHarness(kind, { cacheRelay: { windowChunks: 4, stallMs: 20_000 } });
    const dirP = tempDir();
    const dirB = tempDir();
    let fake: Awaited<ReturnType<typeof fakeAgent>> | undefined;
    try {
      const key = 'default/deps';
      const b = await h.addAgent('host-b', { cacheWrites: true }, { labels: ['site-b'], caches: makeCacheStore(dirB) });
      // B's own (older) version first.
      const old = await finished(h, await submit(h, 'cache-fill 1', 'site-b', { key: 'deps', write: true, size: '64M' }));
      const oldV = old.cacheOutcome?.committed?.id;
      assert.ok(oldV, JSON.stringify(old.cacheOutcome));
      // The peer is a real `kiln agent` process; its sends stop after 3 chunks (KILN_TEST_HOLD_CACHE_SEND).
      const peer = spawnBuiltKiln(['agent', '--server', h.url, '--token', h.agentToken, '--name', 'host-p', '--label', 'site-p', '--driver', 'memory', '--data-dir', dirP], {
        KILN_TEST_MEMORY_CACHES: '1',
        KILN_TEST_HOLD_CACHE_SEND: '3',
      });
      await until('host-p to connect', () => [...h.server.registry.links.values()].some((l) => l.name === 'host-p'), 60_000);
      const w = await finished(h, await submit(h, 'cache-fill 8', 'site-p', { key: 'deps', write: true }));
      assert.equal(w.state, 'succeeded');
      const v = w.cacheOutcome?.committed?.id;
      assert.ok(v && v > oldV, 'the peer holds a newer version');
      await reported(h, 'host-p', key, v);

      // A fake host with a job of its own: it may not fetch another tenant's cache, nor a job it does not run.
      fake = await fakeAgent(h, 'host-x', ['site-x']);
      const xJob = await submit(h, 'echo x', 'site-x', { key: 'deps' });
      const launch = await fake.next((m) => m.type === 'launch' && m.jobId === xJob);
      assert.equal((launch.spec as { cache: { key: string } }).cache.key, key);
      fake.send({ type: 'cache.fetch', tv: CACHE_TRANSFER_VERSION, fetchId: 'fetch-other-tenant', jobId: xJob, attempt: 1, key: 'acme/deps' });
      const refusedKey = await fake.next((m) => m.type === 'cache.fetch.failed' && m.fetchId === 'fetch-other-tenant');
      assert.equal(refusedKey.outcome, 'refused');
      assert.match(String(refusedKey.reason), /is not job \d+'s cache/);
      fake.send({ type: 'cache.fetch', tv: CACHE_TRANSFER_VERSION, fetchId: 'fetch-not-mine', jobId: w.id, attempt: 1, key });
      const refusedJob = await fake.next((m) => m.type === 'cache.fetch.failed' && m.fetchId === 'fetch-not-mine');
      assert.equal(refusedJob.outcome, 'refused');
      assert.match(String(refusedJob.reason), /is not placed on this host/);

      // B's job starts a fetch from the peer, which stops after 3 chunks.
      const started = new Promise<string>((resolve) => h.server.events.on('cache.transfer', (e) => void (!e.outcome && e.to === 'host-b' && resolve(e.transferId))));
      const r = await submit(h, 'echo read', 'site-b', { key: 'deps' });
      const transferId = await started;
      await peer.waitForOutput(/holding the send of cache default\/deps after 3 chunks/, 60_000);
      // Forged: the fake host is neither side of that transfer; its chunk frame and ack are refused and never relayed.
      const relayedBefore = await relayedBytes(h);
      fake.sendBinary(chunkFrame(transferId, 3, 3 * MAX_CACHE_CHUNK_BYTES, Buffer.alloc(MAX_CACHE_CHUNK_BYTES, 1)));
      const e1 = await fake.next((m) => m.type === 'error' && m.code === 'cache.transfer_forged');
      assert.match(String(e1.message), /cache\.chunk refused: this host is not the sender of that transfer/);
      fake.send({ type: 'cache.ack', tv: CACHE_TRANSFER_VERSION, transferId, seq: 2 });
      await fake.next((m) => m.type === 'error' && String(m.message).startsWith('cache.ack refused'));
      // An offer for that transfer from a host that was never asked to send it: refused the same way.
      fake.send({ type: 'cache.offer', tv: CACHE_TRANSFER_VERSION, transferId, version: v, length: 64 * MiB, sha256: '0'.repeat(64), record: { createdAt: new Date().toISOString(), jobId: String(w.id) } });
      await fake.next((m) => m.type === 'error' && String(m.message).startsWith('cache.offer refused'));
      // Unsolicited: a chunk frame for a transfer that does not exist is dropped (it could be one that just ended).
      fake.sendBinary(chunkFrame('no-such-transfer', 0, 0, Buffer.alloc(16)));
      // Malformed (a transfer version this server does not speak): a protocol error; the connection is closed.
      fake.sendBinary(rawFrame({ type: 'cache.chunk', tv: 1, transferId, seq: 3, offset: 3 * MAX_CACHE_CHUNK_BYTES }, Buffer.alloc(16)));
      const bad = await fake.next((m) => m.type === 'error' && m.code === 'protocol.chunk_bad_header');
      assert.match(String(bad.message), new RegExp(`a cache chunk frame of transfer version 1; this side speaks ${CACHE_TRANSFER_VERSION}`));
      await fake.closed;
      const text = await metrics(h);
      assert.match(text, /^kiln_agent_protocol_errors_total\{code="cache\.transfer_forged"\} 3$/m);
      assert.match(text, /^kiln_agent_protocol_errors_total\{code="protocol\.chunk_bad_header"\} 1$/m);
      assert.equal(await relayedBytes(h), relayedBefore, 'nothing the fake host sent was relayed');
      fake = undefined;

      await peer.kill('SIGKILL');
      const job = await finished(h, r);
      assert.equal(job.state, 'succeeded', 'the job runs whatever happened to the transfer');
      assert.equal(job.cacheOutcome?.fetch?.outcome, 'peer_gone');
      assert.match(job.cacheOutcome?.fetch?.reason ?? '', /the peer host host-p disconnected during the transfer/);
      assert.equal(job.cacheOutcome?.hit, true);
      assert.equal(job.cacheOutcome?.version, oldV, 'it ran on B\'s older version');
      assert.match(await logs(h, r), new RegExp(`kiln: could not fetch cache version ${v} from host host-p \\(peer_gone: the peer host host-p disconnected during the transfer\\); the job starts on this host's older version ${oldV}\\n`));
      const info = makeCacheStore(dirB).inspect(key);
      assert.equal(info?.current?.id, oldV, 'B\'s current version is unchanged');
      assert.deepEqual(info.versions.map((x) => x.id), [oldV], 'nothing of the partial copy is visible');
      assert.equal(existsSync(versionFile(dirB, key, v)), false);
      assert.deepEqual(readdirSync(join(dirB, 'caches', cacheId(key), 'leases')), []);
      assert.match(await metrics(h), /^kiln_cache_transfers_total\{outcome="peer_gone"\} 1$/m);
      assert.ok(b.isConnected());
    } finally {
      fake?.close();
      await h.close();
    }
  });

  test(`${kind}: chunks are binary frames: a peer's malformed frame closes its connection with the code of its fault and is never relayed; a binary frame before an accepted hello is refused; an agent of another transfer version is refused with both versions named`, { skip, timeout: 180_000 }, async () => {
    const h = await startHarness(kind, { cacheRelay: { windowChunks: 4, stallMs: 20_000 } });
    const dirB = tempDir();
    const fakes: Awaited<ReturnType<typeof fakeAgent>>[] = [];
    const raws: WebSocket[] = [];
    try {
      const key = 'default/deps';
      const b = await h.addAgent('host-b', {}, { labels: ['site-b'], caches: makeCacheStore(dirB) });
      // Host P0, hand-made, commits a version of the cache with a job of its own (write: true); it reports
      // holding it only later. Hand-made peers can then send whatever frames they like.
      const p0 = await fakeAgent(h, 'host-p0', ['site-p0']);
      fakes.push(p0);
      const wJob = await submit(h, 'echo w', 'site-p0', { key: 'deps', write: true });
      await p0.next((m) => m.type === 'launch' && m.jobId === wJob);
      p0.send({ type: 'job.phase', jobId: wJob, attempt: 1, phase: 'booting' });
      p0.send({ type: 'job.start', jobId: wJob, attempt: 1 });
      await p0.next((m) => m.type === 'start.ok' && m.jobId === wJob);
      const v = `${Date.now().toString(36).padStart(9, '0')}-0c0ffee0`;
      const sha256 = createHash('sha256').update('the version').digest('hex');
      p0.send({ type: 'job.done', result: { jobId: wJob, attempt: 1, outcome: 'exited', exitCode: 0, logChunks: 0, cache: { key, hit: false, committed: { id: v, bytes: MiB, seconds: 1, sha256 } } } });
      assert.equal((await finished(h, wJob)).cacheOutcome?.committed?.id, v);
      const held = [{ key, version: v, bytes: MiB, sizeBytes: 64 * MiB, versions: 1, lastUsedAt: new Date().toISOString() }];

      // An agent of the previous transfer version (1) holding that version: it is never asked to send, and a
      // fetch of its own is refused, the reason naming both versions (in an answer it can read: its version).
      const old = await fakeAgent(h, 'host-old', ['site-old'], undefined, { cacheTransfer: 1, caches: held });
      fakes.push(old);
      const oJob = await submit(h, 'echo o', 'site-old', { key: 'deps' });
      await old.next((m) => m.type === 'launch' && m.jobId === oJob);
      old.send({ type: 'cache.fetch', tv: 1, fetchId: 'fetch-old-version', jobId: oJob, attempt: 1, key });
      const refusedOld = await old.next((m) => m.type === 'cache.fetch.failed' && m.fetchId === 'fetch-old-version');
      assert.deepEqual([refusedOld.outcome, refusedOld.tv], ['refused', 1]);
      assert.equal(refusedOld.reason, `this agent speaks cache transfer version 1, the server version ${CACHE_TRANSFER_VERSION}: run the same kiln version on agents and servers`);
      const none = await finished(h, await submit(h, 'echo read', 'site-b', { key: 'deps' }));
      assert.equal(none.state, 'succeeded');
      assert.equal(none.cacheOutcome?.fetch?.outcome, 'none', JSON.stringify(none.cacheOutcome));
      assert.equal(none.cacheOutcome?.fetch?.reason, `no connected peer host that speaks cache transfer version ${CACHE_TRANSFER_VERSION} holds a newer version of this cache; peers that hold one speak another version: host-old (version 1)`);
      assert.equal(old.got.filter((m) => m.type === 'cache.send').length, 0, 'the older agent was never asked to send');
      old.close();
      await within('the old agent\'s close', old.closed);

      // Each peer offers the version, sends one well-formed chunk (relayed, written and acknowledged by B), then a
      // malformed frame naming the same transfer: the server closes the peer's connection (1008, the fault's
      // code) and relays nothing of it; B's job starts without the version, having written the one chunk only.
      const header = (transferId: string) => ({ type: 'cache.chunk', tv: CACHE_TRANSFER_VERSION, transferId, seq: 1, offset: MAX_CACHE_CHUNK_BYTES });
      const block = Buffer.alloc(MAX_CACHE_CHUNK_BYTES, 0x5a);
      const cases: { what: string; frame: (transferId: string) => Buffer; code: string }[] = [
        { what: 'too short to hold a header length', frame: () => Buffer.from([0, 0, 0]), code: 'protocol.chunk_too_short' },
        { what: 'truncated inside its header', frame: (id) => chunkFrame(id, 1, MAX_CACHE_CHUNK_BYTES, block).subarray(0, 40), code: 'protocol.chunk_header_length' },
        { what: 'a header length past its end', frame: (id) => rawFrame(header(id), Buffer.alloc(0), 500), code: 'protocol.chunk_header_length' },
        { what: 'a header that is not JSON', frame: (id) => rawFrame(JSON.stringify(header(id)).slice(0, -1), block), code: 'protocol.chunk_bad_header' },
        { what: 'more data than a chunk holds', frame: (id) => rawFrame(header(id), Buffer.alloc(MAX_CACHE_CHUNK_BYTES + 1, 0x5a)), code: 'protocol.chunk_too_large' },
        { what: 'no data', frame: (id) => rawFrame(header(id), Buffer.alloc(0)), code: 'protocol.chunk_empty' },
      ];
      for (const [i, c] of cases.entries()) {
        const p = i === 0 ? p0 : await fakeAgent(h, `host-p${i}`, [`site-p${i}`], undefined, { caches: held });
        if (i > 0) fakes.push(p);
        else p.send({ type: 'host.status', caches: held });
        await reported(h, p === p0 ? 'host-p0' : `host-p${i}`, key, v);
        const r = await submit(h, `echo read ${i}`, 'site-b', { key: 'deps' });
        const send = await p.next((m) => m.type === 'cache.send');
        const transferId = String(send.transferId);
        p.send({ type: 'cache.offer', tv: CACHE_TRANSFER_VERSION, transferId, version: v, length: 64 * MiB, sha256, record: { createdAt: new Date().toISOString(), jobId: String(wJob) } });
        p.sendBinary(chunkFrame(transferId, 0, 0, block));
        await p.next((m) => m.type === 'cache.ack' && m.transferId === transferId && m.seq === 0);
        assert.equal(await relayedBytes(h), (i + 1) * MAX_CACHE_CHUNK_BYTES, c.what);
        p.sendBinary(c.frame(transferId));
        const e = await p.next((m) => m.type === 'error');
        assert.equal(e.code, c.code, `${c.what}: ${JSON.stringify(e)}`);
        const [code, reason] = (await within(`${c.what}: the peer's connection to close`, p.closed)) as [number, Buffer];
        assert.deepEqual([code, String(reason)], [1008, c.code], c.what);
        const job = await finished(h, r);
        assert.equal(job.state, 'succeeded', c.what);
        assert.deepEqual([job.cacheOutcome?.fetch?.outcome, job.cacheOutcome?.fetch?.bytes, job.cacheOutcome?.hit], ['peer_gone', MAX_CACHE_CHUNK_BYTES, false], `${c.what}: ${JSON.stringify(job.cacheOutcome)}`);
        assert.equal(await relayedBytes(h), (i + 1) * MAX_CACHE_CHUNK_BYTES, `${c.what}: nothing of the malformed frame was relayed`);
        assert.match(await metrics(h), new RegExp(`^kiln_agent_protocol_errors_total\\{code="${c.code.replace('.', '\\.')}"\\} ${cases.filter((x, j) => j <= i && x.code === c.code).length}$`, 'm'));
      }
      assert.equal(makeCacheStore(dirB).inspect(key)?.current, undefined, 'no version came of it on B');
      assert.deepEqual(readdirSync(join(dirB, 'caches', cacheId(key), 'leases')), []);
      assert.ok(b.isConnected(), 'the receiver stayed connected throughout');

      // A binary frame as a connection's first message, or right behind a hello the server has not accepted yet:
      // refused as such. The hello and a small frame leave in one write (the client's TCP socket corked, as the
      // server corks its own), so the server reads both at once and decodes the frame before the hello's
      // registration (which awaits the store) can have linked the host. (A 512 KiB frame takes several reads,
      // and an in-process store may have accepted the hello by the last one.)
      const relayed = await relayedBytes(h);
      const helloOf = (name: string) => ({
        type: 'hello',
        protocol: PROTOCOL_VERSION,
        host: { name, arch: 'amd64', cpus: 2, memoryBytes: 4 * 1024 ** 3, diskBytes: 50 * 1024 ** 3, accel: 'tcg', labels: [], driver: 'memory', agentVersion: KILN_VERSION },
        running: [],
        finished: [],
        cacheTransfer: CACHE_TRANSFER_VERSION,
      });
      for (const withHello of [false, true]) {
        const ws = new WebSocket(`${h.url.replace(/^http/, 'ws')}/v1/agent/connect`, { headers: { authorization: `Bearer ${h.agentToken}` } });
        raws.push(ws);
        const texts: { type: string; code?: string }[] = [];
        ws.on('message', (d, isBinary) => void (!isBinary && texts.push(JSON.parse(String(d)) as { type: string })));
        const closed = once(ws, 'close');
        await once(ws, 'open');
        const tcp = (ws as unknown as { _socket: { cork(): void; uncork(): void } })._socket;
        tcp.cork();
        if (withHello) ws.send(JSON.stringify(helloOf('host-early')));
        ws.send(chunkFrame('abcdefgh12345678', 0, 0, Buffer.alloc(64, 1)), { binary: true });
        tcp.uncork();
        const [code, reason] = (await within(`the connection with a binary frame ${withHello ? 'right behind a hello' : 'first'} to close`, closed)) as [number, Buffer];
        assert.deepEqual([code, String(reason)], [1008, 'protocol.binary'], `binary frame ${withHello ? 'right behind a hello' : 'first'}`);
        assert.deepEqual(texts.map((t) => [t.type, t.code]), [['error', 'protocol.binary']], 'no welcome, only the error');
      }
      assert.match(await metrics(h), /^kiln_agent_protocol_errors_total\{code="protocol\.binary"\} 2$/m);
      assert.equal(await relayedBytes(h), relayed);
    } finally {
      for (const f of fakes) f.close();
      for (const w of raws) w.terminate();
      await h.close();
    }
  });

  test(`${kind}: a receiver that acknowledges chunks it has not read: the relay holds back, the socket's queue to it stays bounded, and the transfer goes on once it reads`, { skip, timeout: 180_000 }, async (t) => {
    const bound = MiB;
    const h = await startHarness(kind, { cacheRelay: { windowChunks: 2, stallMs: 60_000, maxBufferedBytes: bound } });
    const dirA = tempDir();
    let fake: Awaited<ReturnType<typeof fakeAgent>> | undefined;
    let acking: NodeJS.Timeout | undefined;
    let sampling: NodeJS.Timeout | undefined;
    try {
      const key = 'default/deps';
      const v = await committedOnA(h, dirA, 48, '192M');

      // The receiver: a hand-made host that stops reading its socket once the transfer begins, and keeps
      // acknowledging every sequence number blindly (what a compromised host could do).
      fake = await fakeAgent(h, 'host-x', ['site-x']);
      const f = fake;
      const xJob = await submit(h, 'echo x', 'site-x', { key: 'deps' });
      await f.next((m) => m.type === 'launch' && m.jobId === xJob);
      f.ws.on('message', (d, isBinary) => void (!isBinary && JSON.parse(String(d)).type === 'cache.incoming' && f.ws.pause()));
      const link = linkOf(h, 'host-x');
      assert.ok(link?.bufferedBytes, 'the server can see its socket\'s queue');
      let peak = 0;
      sampling = setInterval(() => (peak = Math.max(peak, link.bufferedBytes!())), 2);
      f.send({ type: 'cache.fetch', tv: CACHE_TRANSFER_VERSION, fetchId: 'fetch-slow-reader', jobId: xJob, attempt: 1, key });
      const inc = await f.next((m) => m.type === 'cache.incoming');
      const transferId = String(inc.transferId);
      acking = setInterval(() => {
        for (let seq = 120; seq >= 0; seq--) f.send({ type: 'cache.ack', tv: CACHE_TRANSFER_VERSION, transferId, seq });
      }, 40);
      // Until the relay stops relaying (held back, or everything relayed into the socket's queue).
      let last = -1;
      let stableSince = Date.now();
      await until('the relay to stop relaying', async () => {
        const n = await relayedBytes(h);
        if (n !== last) [last, stableSince] = [n, Date.now()];
        return Date.now() - stableSince > 1500;
      }, 60_000);
      const image = 48 * MiB;
      t.diagnostic(`held back after ${last} bytes relayed; the socket's queue peaked at ${peak} bytes (bound ${bound})`);
      // Bounded: what it may hold past the bound is the window (2 chunk frames of 512 KiB and a header) and one more.
      const frameMax = MAX_CACHE_CHUNK_BYTES + 1024;
      assert.ok(peak > 0, 'the queue was sampled');
      assert.ok(peak <= bound + 3 * frameMax, `the socket's queue peaked at ${peak} bytes (bound ${bound})`);
      assert.ok(last < image / 2, `the relay held back: ${last} bytes relayed of a ${image}-byte fill`);
      assert.equal(h.server.registry.links.size, 2);

      // Reading again: the transfer goes on to its end.
      f.ws.resume();
      const end = await f.next((m) => m.type === 'cache.end' && m.transferId === transferId, 60_000);
      clearInterval(acking);
      acking = undefined;
      assert.equal(f.got.filter((m) => m.type === 'cache.chunk' && m.transferId === transferId).length, end.chunks);
      assert.ok(await relayedBytes(h) >= image, 'all of it was relayed in the end');
      assert.ok(peak <= bound + 3 * frameMax, `the socket's queue peaked at ${peak} bytes (bound ${bound})`);
    } finally {
      if (acking) clearInterval(acking);
      if (sampling) clearInterval(sampling);
      fake?.close();
      await h.close();
    }
  });

  test(`${kind}: a host is the receiver of at most 2 transfers at once and the sender of at most 2; a fetch over either cap falls back (none) and a later one gets the freed slot`, { skip, timeout: 180_000 }, async () => {
    const h = await startHarness(kind, { cacheRelay: { windowChunks: 2, stallMs: 60_000 } });
    const dirA = tempDir();
    const fakes: Awaited<ReturnType<typeof fakeAgent>>[] = [];
    try {
      const key = 'default/deps';
      // The peer stops after one chunk: its transfers stay under way until the receiver goes.
      const v = await committedOnA(h, dirA, 2, '64M', { holdSendAfterChunks: 1 });
      const big = { cpus: 16, memoryBytes: 64 * 1024 ** 3 };
      const x = await fakeAgent(h, 'host-x', ['site-x'], big);
      fakes.push(x);
      const y = await fakeAgent(h, 'host-y', ['site-y'], big);
      fakes.push(y);
      const xJobs = [await submit(h, 'echo 1', 'site-x', { key: 'deps' }), await submit(h, 'echo 2', 'site-x', { key: 'deps' }), await submit(h, 'echo 3', 'site-x', { key: 'deps' })];
      const yJob = await submit(h, 'echo y', 'site-y', { key: 'deps' });
      for (const j of xJobs) await x.next((m) => m.type === 'launch' && m.jobId === j);
      await y.next((m) => m.type === 'launch' && m.jobId === yJob);
      const fetchFor = (f: typeof x, fetchId: string, jobId: number) => {
        f.send({ type: 'cache.fetch', tv: CACHE_TRANSFER_VERSION, fetchId, jobId, attempt: 1, key });
        return f.next((m) => (m.type === 'cache.incoming' || m.type === 'cache.fetch.failed') && m.fetchId === fetchId, 20_000);
      };
      assert.equal((await fetchFor(x, 'fetch-x-1', xJobs[0]!)).type, 'cache.incoming');
      assert.equal((await fetchFor(x, 'fetch-x-2', xJobs[1]!)).type, 'cache.incoming');
      const x3 = await fetchFor(x, 'fetch-x-3', xJobs[2]!);
      assert.deepEqual([x3.type, x3.outcome], ['cache.fetch.failed', 'none']);
      assert.match(String(x3.reason), /this host receives 2 cache transfers already/);
      const y1 = await fetchFor(y, 'fetch-y-1', yJob);
      assert.deepEqual([y1.type, y1.outcome], ['cache.fetch.failed', 'none']);
      assert.match(String(y1.reason), /the peer hosts that hold it send 2 cache transfers already/);
      assert.match(await metrics(h), /^kiln_cache_transfers_total\{outcome="none"\} 3$/m, "the writer's own fetch, x3 and y1");

      // X gone: its two transfers end, and Y's next fetch gets a slot.
      x.close();
      await x.closed;
      await until('x\'s transfers to end', async () => /^kiln_cache_transfers_total\{outcome="failed"\} 2$/m.test(await metrics(h)));
      const y2 = await fetchFor(y, 'fetch-y-2', yJob);
      assert.equal(y2.type, 'cache.incoming', JSON.stringify(y2));
      assert.equal(y2.from, 'host-a');
    } finally {
      for (const f of fakes) f.close();
      await h.close();
    }
  });

  test(`${kind}: a lying peer: the version's ref, commit, writer and time that reach the receiver are the server's record of the committing job, not the peer's`, { skip, timeout: 120_000 }, async () => {
    const h = await startHarness(kind, { cacheRelay: { windowChunks: 4, stallMs: 20_000 } });
    const dirA = tempDir();
    const dirB = tempDir();
    try {
      const key = 'default/deps';
      await h.addAgent('host-a', { cacheWrites: true }, { labels: ['site-a'], caches: makeCacheStore(dirA) });
      await h.addAgent('host-b', {}, { labels: ['site-b'], caches: makeCacheStore(dirB) });
      const w = await finished(h, await submit(h, 'cache-fill 2', 'site-a', { key: 'deps', write: true, size: '64M' }));
      const v = w.cacheOutcome?.committed?.id;
      assert.ok(v, JSON.stringify(w.cacheOutcome));
      await reported(h, 'host-a', key, v);
      const byServer = (await getJob(h.store.db, w.id))?.cache?.by;
      assert.ok(byServer?.startsWith('api token '), byServer);
      // Host A lies about who wrote it (its record on disk is what its agent offers); the job id and checksum stay.
      const recPath = join(dirA, 'caches', cacheId(key), 'versions', `${v}.json`);
      const rec = JSON.parse(readFileSync(recPath, 'utf8')) as Record<string, unknown>;
      writeFileSync(recPath, JSON.stringify({ ...rec, ref: 'refs/heads/main', commit: 'f'.repeat(40), by: 'github trusted/repo', createdAt: '2001-01-01T00:00:00.000Z' }));
      const r = await finished(h, await submit(h, 'echo read', 'site-b', { key: 'deps' }));
      assert.equal(r.cacheOutcome?.fetch?.outcome, 'fetched', JSON.stringify(r.cacheOutcome));
      const got = makeCacheStore(dirB).inspect(key)?.current;
      assert.equal(got?.id, v);
      assert.equal(got.jobId, String(w.id));
      assert.equal(got.by, byServer, 'the writer is the committing job\'s, as the server stored it');
      assert.equal(got.ref, undefined, 'no ref: the committing job had none');
      assert.equal(got.commit, undefined, 'no commit: the committing job had none');
      assert.ok(Math.abs(Date.parse(got.createdAt) - Date.parse(String(rec.createdAt))) < 120_000, `the version's time: ${got.createdAt}, not the peer's`);
    } finally {
      await h.close();
    }
  });

  test(`${kind}: an 'ask' job the server refused cannot vouch for a version: the server stores its own answer, and a host claiming such a commit is never asked to send it`, { skip, timeout: 120_000 }, async () => {
    const h = await startHarness(kind, { cacheRelay: { windowChunks: 4, stallMs: 5_000 } });
    const dirB = tempDir();
    let fake: Awaited<ReturnType<typeof fakeAgent>> | undefined;
    try {
      const key = 'default/deps';
      // A job whose cache write is decided after it ran (as a GitHub runner's is), queued for the lying host.
      const j = await submit(h, 'echo x', 'site-x', { key: 'deps' });
      await sql`UPDATE jobs SET cache = jsonb_set(cache, '{write}', '"ask"') WHERE id = ${j}`.execute(h.store.db);
      fake = await fakeAgent(h, 'host-x', ['site-x']);
      const f = fake;
      const launch = await f.next((m) => m.type === 'launch' && m.jobId === j);
      assert.equal((launch.spec as { cache: { write: unknown } }).cache.write, 'ask');
      f.send({ type: 'job.phase', jobId: j, attempt: 1, phase: 'booting' });
      f.send({ type: 'job.start', jobId: j, attempt: 1 });
      await f.next((m) => m.type === 'start.ok' && m.jobId === j);
      f.send({ type: 'cache.ask', jobId: j, attempt: 1 });
      const answer = await f.next((m) => m.type === 'cache.answer' && m.jobId === j);
      assert.equal(answer.write, false, 'this server (no GitHub) says no');
      const stored = await sql<{ a: { attempt: number; write: boolean; reason?: string } | string | null }>`SELECT cache_answer AS a FROM jobs WHERE id = ${j}`.execute(h.store.db);
      const a = stored.rows[0]?.a;
      assert.deepEqual(typeof a === 'string' ? JSON.parse(a) : a, { attempt: 1, write: false, reason: answer.reason, at: (typeof a === 'string' ? JSON.parse(a) : a)?.at });
      // The host commits anyway and says so: its result names a version, and it reports holding it.
      const v = `${Date.now().toString(36).padStart(9, '0')}-0badc0de`;
      f.send({ type: 'job.done', result: { jobId: j, attempt: 1, outcome: 'exited', exitCode: 0, logChunks: 0, cache: { key, hit: false, committed: { id: v, bytes: MiB, seconds: 1, sha256: 'e'.repeat(64) } } } });
      assert.equal((await finished(h, j)).cacheOutcome?.committed?.id, v);
      f.send({ type: 'host.status', caches: [{ key, version: v, bytes: MiB, sizeBytes: 64 * MiB, versions: 1, lastUsedAt: new Date().toISOString() }] });
      await reported(h, 'host-x', key, v);

      // A real host's job of that cache: no transfer from the lying host; the job starts on an empty cache.
      await h.addAgent('host-b', {}, { labels: ['site-b'], caches: makeCacheStore(dirB), cacheTransfer: { fetchTimeoutMs: 15_000 } });
      const r = await finished(h, await submit(h, 'echo read', 'site-b', { key: 'deps' }));
      assert.equal(r.state, 'succeeded');
      assert.equal(r.cacheOutcome?.fetch?.outcome, 'none', JSON.stringify(r.cacheOutcome));
      assert.match(r.cacheOutcome?.fetch?.reason ?? '', /no peer host holds a newer version committed by a job of this cache/);
      assert.equal(f.got.filter((m) => m.type === 'cache.send').length, 0, 'the lying host was never asked to send');
    } finally {
      fake?.close();
      await h.close();
    }
  });

  test(`${kind}: a receiving host that cannot open the version it is sent (its files may not grow that large) releases the lease it took: the cache is not held in use and can be evicted`, { skip, timeout: 180_000 }, async () => {
    const h = await startHarness(kind, { cacheRelay: { windowChunks: 4, stallMs: 20_000 } });
    const dirA = tempDir();
    const dirB = tempDir();
    try {
      const key = 'default/deps';
      // The receiver is a real `kiln agent` process. Its first job makes the cache here at 128 MiB (empty: no
      // peer has a version yet), so a 128 MiB version from a peer is within the cache's size on this host.
      const b = spawnBuiltKiln(['agent', '--server', h.url, '--token', h.agentToken, '--name', 'host-b', '--label', 'site-b', '--driver', 'memory', '--data-dir', dirB], { KILN_TEST_MEMORY_CACHES: '1' });
      await until('host-b to connect', () => linkOf(h, 'host-b'), 60_000);
      const first = await finished(h, await submit(h, 'echo first', 'site-b', { key: 'deps', size: '128M' }));
      assert.equal(first.state, 'succeeded', await logs(h, first.id));
      const v = await committedOnA(h, dirA, 1, '128M');
      // Now its files may not exceed 64 MiB (RLIMIT_FSIZE): sizing the 128 MiB copy fails with EFBIG (as on a
      // file system with a smaller largest file); the cache's empty disk, made before, is only linked again.
      const lim = spawnSync('prlimit', ['--pid', String(b.proc.pid), `--fsize=${64 * MiB}:${64 * MiB}`], { encoding: 'utf8' });
      assert.equal(lim.status, 0, lim.stderr);
      const r = await finished(h, await submit(h, 'echo read', 'site-b', { key: 'deps', size: '32M' }));
      assert.equal(r.state, 'succeeded', await logs(h, r.id));
      assert.equal(r.cacheOutcome?.fetch?.outcome, 'failed', JSON.stringify(r.cacheOutcome));
      assert.match(r.cacheOutcome?.fetch?.reason ?? '', /could not make room for version .*File too large|EFBIG/);
      assert.equal(r.cacheOutcome?.hit, false);
      const storeB = makeCacheStore(dirB, { maxIdleMs: 0 }); // everything idle is past the retention
      assert.deepEqual(readdirSync(join(dirB, 'caches', cacheId(key), 'leases')), [], 'no lease left behind while the agent lives');
      assert.equal(storeB.inspect(key)?.inUse, 0);
      assert.ok(b.proc.exitCode === null, 'the agent is still running (its leases would count as live)');
      assert.deepEqual(storeB.collect(), [key], 'the cache can be evicted (retention skips a cache in use)');
      assert.equal(storeB.inspect(key), undefined);
      await b.kill();
    } finally {
      await h.close();
    }
  });

  test(`${kind}: a fetch counts its version's announced size against the receiving host's cache budget before it starts: older caches not in use are evicted first, and a version over the budget is refused`, { skip, timeout: 180_000 }, async () => {
    const h = await startHarness(kind, { cacheRelay: { windowChunks: 4, stallMs: 20_000 } });
    const dirA = tempDir();
    const dirB = tempDir();
    const dirC = tempDir();
    try {
      const key = 'default/deps';
      // ~18 MiB written: B's copy of it later counts for as much (if counted) against B's 80 MiB budget.
      const v = await committedOnA(h, dirA, 18, '64M');

      // B (budget 80 MiB) holds another cache of ~20 MiB: with the 64 MiB version announced, that is over.
      const storeB = makeCacheStore(dirB, { budgetBytes: 80 * MiB });
      await h.addAgent('host-b', { cacheWrites: true }, { labels: ['site-b'], caches: storeB });
      const o = await finished(h, await submit(h, 'cache-fill 18', 'site-b', { key: 'other', write: true, size: '64M' }));
      assert.ok(o.cacheOutcome?.committed, JSON.stringify(o.cacheOutcome));
      const otherBytes = storeB.inspect('default/other')?.bytes ?? 0;
      assert.ok(otherBytes > 16 * MiB && otherBytes + 64 * MiB > 80 * MiB && otherBytes < 80 * MiB, `other: ${otherBytes} bytes`);
      const r = await finished(h, await submit(h, 'echo read', 'site-b', { key: 'deps' }));
      assert.equal(r.cacheOutcome?.fetch?.outcome, 'fetched', JSON.stringify(r.cacheOutcome));
      assert.equal(r.cacheOutcome?.version, v);
      assert.equal(storeB.inspect('default/other'), undefined, 'the older cache was evicted to make room before the fetch');
      assert.ok(storeB.counters.evictions >= 1);

      // A newer 64 MiB version on A: B's own older one (not in use) does not count against it, since the
      // collector drops it once the new one is current (counted, 64 + 64 MiB was over the 80 MiB, every time).
      const w2 = await finished(h, await submit(h, 'cache-fill 3', 'site-a', { key: 'deps', write: true }));
      const v2 = w2.cacheOutcome?.committed?.id;
      assert.ok(v2 && v2 > v, JSON.stringify(w2.cacheOutcome));
      await reported(h, 'host-a', key, v2);
      const r2 = await finished(h, await submit(h, 'echo read again', 'site-b', { key: 'deps' }));
      assert.equal(r2.cacheOutcome?.fetch?.outcome, 'fetched', JSON.stringify(r2.cacheOutcome));
      assert.equal(r2.cacheOutcome?.version, v2);

      // C's budget (48 MiB) is below the version's size: refused, and the job starts on an empty cache.
      const storeC = makeCacheStore(dirC, { budgetBytes: 48 * MiB });
      await h.addAgent('host-c', {}, { labels: ['site-c'], caches: storeC });
      const c = await finished(h, await submit(h, 'echo read', 'site-c', { key: 'deps' }));
      assert.equal(c.state, 'succeeded');
      assert.equal(c.cacheOutcome?.fetch?.outcome, 'refused', JSON.stringify(c.cacheOutcome));
      assert.match(c.cacheOutcome?.fetch?.reason ?? '', /does not fit this host's cache budget of 48(\.0)? ?Mi?B?/);
      assert.equal(c.cacheOutcome?.hit, false);
      assert.equal(storeC.inspect(key)?.versions.length, 0);
      assert.deepEqual(readdirSync(join(dirC, 'caches', cacheId(key), 'leases')), []);

      // The announced length is the sending host's word. A version larger than the job's cache size (and than
      // the cache's size on the receiving host) is refused before anything is evicted for it: D's other cache,
      // not in use, stays, where the budget check alone would have evicted it.
      const dirD = tempDir();
      const storeD = makeCacheStore(dirD, { budgetBytes: 80 * MiB });
      await h.addAgent('host-d', { cacheWrites: true }, { labels: ['site-d'], caches: storeD });
      const od = await finished(h, await submit(h, 'cache-fill 18', 'site-d', { key: 'other', write: true, size: '64M' }));
      assert.ok(od.cacheOutcome?.committed, JSON.stringify(od.cacheOutcome));
      const d = await finished(h, await submit(h, 'echo read', 'site-d', { key: 'deps', size: '16M' }));
      assert.equal(d.state, 'succeeded');
      assert.equal(d.cacheOutcome?.fetch?.outcome, 'refused', JSON.stringify(d.cacheOutcome));
      assert.match(d.cacheOutcome?.fetch?.reason ?? '', /announced a version of 64(\.0)? ?Mi?B?, larger than the job's cache size and this host's copy \(at most 16(\.0)? ?Mi?B?\)/);
      assert.ok(storeD.inspect('default/other'), 'nothing was evicted for the refused version');
      assert.equal(storeD.counters.evictions, 0);
    } finally {
      await h.close();
    }
  });
}
