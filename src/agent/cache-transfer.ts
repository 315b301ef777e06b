/**
 * The agent's half of host-to-host cache transfers (docs/caches.md, "Fetching a cache from a peer"), both
 * roles over the agent's one WebSocket, relayed by the server (src/server/agents/cache-relay.ts):
 * - receiving: before a cache job starts, ask for a newer version than this host's; write the chunks (binary
 *   chunk frames, core/agent-protocol.ts `decodeCacheChunkFrame`: their raw bytes are written as they came) into
 *   a lease of the cache store (cache-store.ts `receiveVersion`), acknowledging each once written; only a
 *   whole copy matching the checksum its commit recorded enters the store. Bounded in time (the whole fetch)
 *   and in silence (no chunk for a while); any failure leaves the job on what the host has, with the reason;
 * - sending: stream a committed version's non-zero blocks as chunk frames, at most `window` chunks ahead of the
 *   receiver's acknowledgements, holding the version (a lease) meanwhile.
 */
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import {
  CACHE_TRANSFER_VERSION,
  encodeCacheChunkFrame,
  type AgentMessage,
  type CacheChunkFrame,
  type CacheFetchMsg,
  type CacheFetchOutcome,
  type ServerMessageOf,
} from '../core/agent-protocol.ts';
import { isKilnError, toKilnError } from '../core/errors.ts';
import { formatSize } from '../core/sizes.ts';
import { DEFAULT_CACHE_SIZE, nonZeroBlocks, type CacheStore, type VersionReceiver } from '../vm/cache-store.ts';

export interface CacheTransferOptions {
  /** The longest a fetch may take before the job starts without it (default 5 min). */
  fetchTimeoutMs?: number;
  /** The longest a fetch waits for the next chunk (default 30 s). */
  stallMs?: number;
  /** Images larger than this are not fetched (default 64 GiB). */
  maxFetchBytes?: number;
  /** Test-only (KILN_TEST_HOLD_CACHE_SEND): a sending agent stops after this many chunks and waits (a test kills it then). */
  holdSendAfterChunks?: number;
}

type TransferServerMsg = ServerMessageOf<'cache.send' | 'cache.incoming' | 'cache.fetch.failed' | 'cache.end' | 'cache.ack' | 'cache.abort'>;

export interface CacheTransfers {
  /**
   * Fetches a newer version of `key` for job (jobId, attempt) from a peer, if one has it. Never throws.
   * `sizeBytes`: the job's cache size, if it asked for one. A peer's version larger than both that size (or the
   * default) and the cache's size on this host is refused before anything is evicted for it: the length is
   * the sending host's word, and a host that lies about it must not empty this host's other caches.
   */
  fetch(jobId: number, attempt: number, key: string, signal?: AbortSignal, sizeBytes?: number): Promise<CacheFetchMsg>;
  handle(m: TransferServerMsg): void;
  /** A chunk frame the relay forwarded (decoded and checked by the caller). */
  chunk(c: CacheChunkFrame): void;
  /** The connection dropped: fetches under way fail, sends stop. */
  disconnected(): void;
  stop(): void;
}

interface Fetch {
  fetchId: string;
  key: string;
  started: number;
  transferId?: string;
  from?: string;
  version?: string;
  receiver?: VersionReceiver;
  /** The largest version this fetch accepts: the job's cache size (or the default), or the cache's size here if larger. */
  maxLength: number;
  chunks: number;
  /** Writes in arrival order. */
  writing: Promise<void>;
  done(r: CacheFetchMsg): void;
  timer?: NodeJS.Timeout;
  stall?: NodeJS.Timeout;
}

interface Send {
  acked: number;
  window: number;
  stopped: boolean;
  wake?: () => void;
}

export function makeCacheTransfers(o: {
  store: CacheStore;
  /** Sends a message if the connection is up; false if it is not (nothing is queued). */
  send(m: AgentMessage): boolean;
  /** Sends a chunk frame (binary) if the connection is up; false if it is not (nothing is queued). */
  sendChunk(frame: Buffer): boolean;
  log: Logger;
  options?: CacheTransferOptions;
}): CacheTransfers {
  const opts = o.options ?? {};
  const fetchTimeoutMs = opts.fetchTimeoutMs ?? 5 * 60_000;
  const stallMs = opts.stallMs ?? 30_000;
  const maxBytes = opts.maxFetchBytes ?? 64 * 1024 ** 3;
  const fetches = new Map<string, Fetch>();
  const byTransfer = new Map<string, Fetch>();
  const sends = new Map<string, Send>();
  const log = o.log.child({ part: 'cache-transfer' });
  const tv = CACHE_TRANSFER_VERSION;

  /** Ends a fetch once: what was received is dropped unless it was finished, and the server hears how it ended. */
  /** Fetches that ended before the relay's `cache.incoming` arrived (stopped, timed out): its late offer gets this answer. */
  const endedEarly = new Map<string, { outcome: CacheFetchOutcome; reason?: string }>();
  const settle = (f: Fetch, outcome: CacheFetchOutcome, reason?: string, tellServer = true) => {
    if (!fetches.delete(f.fetchId)) return;
    if (!f.transferId && tellServer) {
      endedEarly.set(f.fetchId, { outcome, ...(reason ? { reason } : {}) });
      if (endedEarly.size > 100) endedEarly.delete(endedEarly.keys().next().value!);
    }
    if (f.transferId) byTransfer.delete(f.transferId);
    if (f.timer) clearTimeout(f.timer);
    if (f.stall) clearTimeout(f.stall);
    const bytes = f.receiver?.bytes ?? 0;
    if (outcome !== 'fetched') f.receiver?.abort();
    if (tellServer && f.transferId) o.send({ type: 'cache.received', tv, transferId: f.transferId, outcome, bytes, ...(reason ? { reason: reason.slice(0, 500) } : {}) });
    f.done({
      outcome,
      ...(f.from ? { from: f.from } : {}),
      ...(f.version ? { version: f.version } : {}),
      ...(f.transferId ? { bytes } : {}),
      seconds: (performance.now() - f.started) / 1000,
      ...(reason ? { reason: reason.slice(0, 500) } : {}),
    });
  };
  const watch = (f: Fetch) => {
    if (f.stall) clearTimeout(f.stall);
    f.stall = setTimeout(() => settle(f, 'timeout', `no data from ${f.from ?? 'the peer'} for ${Math.round(stallMs / 1000)} s`), stallMs);
    f.stall.unref();
  };

  const incoming = (m: ServerMessageOf<'cache.incoming'>) => {
    const f = fetches.get(m.fetchId);
    if (!f || f.transferId) {
      // Ended before it came (the relay stops the peer and counts how), or never asked for: refused.
      const early = endedEarly.get(m.fetchId);
      endedEarly.delete(m.fetchId);
      o.send({ type: 'cache.received', tv, transferId: m.transferId, bytes: 0, ...(early ?? { outcome: 'refused', reason: 'this host did not ask for that transfer' }) });
      return;
    }
    f.transferId = m.transferId;
    f.from = m.from;
    f.version = m.version;
    byTransfer.set(m.transferId, f);
    if (m.key !== f.key) return settle(f, 'refused', `the server offered cache ${m.key}, not ${f.key}`);
    if (m.length > maxBytes) return settle(f, 'refused', `the version is ${formatSize(m.length)}, over this host's fetch limit of ${formatSize(maxBytes)}`);
    if (m.length > f.maxLength) return settle(f, 'refused', `the peer announced a version of ${formatSize(m.length)}, larger than the job's cache size and this host's copy (at most ${formatSize(f.maxLength)}): not fetched`);
    try {
      f.receiver = o.store.receiveVersion(f.key, { version: m.version, length: m.length, sha256: m.sha256, record: m.record, from: m.from });
    } catch (e) {
      // Over this host's cache budget even after evicting what is not in use: refused, not failed.
      return settle(f, isKilnError(e, 'cache.over_budget') ? 'refused' : 'failed', toKilnError(e).message);
    }
    watch(f);
  };

  const chunk = ({ header: m, data }: CacheChunkFrame) => {
    const f = byTransfer.get(m.transferId);
    if (!f?.receiver) return;
    if (m.seq !== f.chunks) return settle(f, 'failed', `chunk ${m.seq} arrived where ${f.chunks} was due`);
    f.chunks++;
    watch(f);
    const r = f.receiver;
    f.writing = f.writing.then(async () => {
      if (!fetches.has(f.fetchId)) return;
      try {
        await r.write(m.offset, data);
        o.send({ type: 'cache.ack', tv, transferId: m.transferId, seq: m.seq });
      } catch (e) {
        settle(f, 'failed', toKilnError(e).message);
      }
    });
  };

  const ended = (m: ServerMessageOf<'cache.end'>) => {
    const f = byTransfer.get(m.transferId);
    if (!f?.receiver) return;
    const r = f.receiver;
    f.writing = f.writing.then(async () => {
      if (!fetches.has(f.fetchId)) return;
      if (m.chunks !== f.chunks) return settle(f, 'failed', `the peer sent ${f.chunks} chunks but said ${m.chunks}`);
      try {
        await r.finish();
        settle(f, 'fetched');
      } catch (e) {
        settle(f, isKilnError(e, 'cache.checksum') ? 'checksum' : 'failed', toKilnError(e).message);
      }
    });
  };

  /** Streams a version to the relay: offer, then its non-zero blocks within the window, then end. */
  const serve = async (m: ServerMessageOf<'cache.send'>) => {
    const s: Send = { acked: -1, window: m.window, stopped: false };
    sends.set(m.transferId, s);
    const abort = (reason: string) => {
      if (!s.stopped) o.send({ type: 'cache.abort', tv, transferId: m.transferId, reason: reason.slice(0, 500) });
      s.stopped = true;
    };
    let held;
    try {
      held = o.store.holdVersion(m.key, m.version);
    } catch (e) {
      abort(toKilnError(e).message);
    }
    try {
      if (!held) return abort(`this host no longer holds version ${m.version} of cache ${m.key}`);
      if (!held.record.sha256) return abort(`version ${m.version} has no recorded checksum (committed before transfers)`);
      const { createdAt, jobId, ref, commit, by } = held.record;
      if (!o.send({ type: 'cache.offer', tv, transferId: m.transferId, version: m.version, length: held.length, sha256: held.record.sha256, record: { createdAt, ...(jobId ? { jobId } : {}), ...(ref ? { ref } : {}), ...(commit ? { commit } : {}), ...(by ? { by } : {}) } })) {
        s.stopped = true;
        return;
      }
      log.info({ cache: m.key, version: m.version, bytes: held.length }, 'sending a cache version to a peer host');
      let seq = 0;
      for await (const b of nonZeroBlocks(held.path)) {
        while (!s.stopped && seq > s.acked + s.window) await new Promise<void>((r) => (s.wake = r));
        if (s.stopped) return;
        if (opts.holdSendAfterChunks !== undefined && seq >= opts.holdSendAfterChunks) {
          log.warn({ cache: m.key, version: m.version, chunks: seq }, `holding the send of cache ${m.key} after ${seq} chunks (KILN_TEST_HOLD_CACHE_SEND)`);
          await new Promise<void>((r) => (s.wake = () => s.stopped && r()));
          return;
        }
        if (!o.sendChunk(encodeCacheChunkFrame({ type: 'cache.chunk', tv, transferId: m.transferId, seq, offset: b.offset }, b.data))) {
          s.stopped = true;
          return;
        }
        seq++;
      }
      if (!s.stopped) o.send({ type: 'cache.end', tv, transferId: m.transferId, chunks: seq });
    } catch (e) {
      abort(`reading version ${m.version} failed: ${toKilnError(e).message}`);
    } finally {
      held?.release();
      sends.delete(m.transferId);
    }
  };

  const inflight = new Map<string, Promise<CacheFetchMsg>>();
  const fetchOne = (jobId: number, attempt: number, key: string, signal: AbortSignal | undefined, sizeBytes: number | undefined): Promise<CacheFetchMsg> =>
    new Promise<CacheFetchMsg>((resolve) => {
      if (signal?.aborted) return resolve({ outcome: 'failed', reason: 'the job was stopped' });
      const here = o.store.inspect(key);
      const have = here?.current?.id;
      const maxLength = Math.max(sizeBytes ?? DEFAULT_CACHE_SIZE, here?.sizeBytes ?? 0);
      const f: Fetch = { fetchId: randomBytes(12).toString('base64url'), key, started: performance.now(), maxLength, chunks: 0, writing: Promise.resolve(), done: resolve };
      fetches.set(f.fetchId, f);
      f.timer = setTimeout(() => settle(f, 'timeout', `the fetch took longer than ${Math.round(fetchTimeoutMs / 1000)} s`), fetchTimeoutMs);
      f.timer.unref();
      signal?.addEventListener('abort', () => settle(f, 'failed', 'the job was stopped'), { once: true });
      if (!o.send({ type: 'cache.fetch', tv, fetchId: f.fetchId, jobId, attempt, key, ...(have ? { have } : {}) })) settle(f, 'failed', 'the agent is not connected to the server', false);
    });

  return {
    async fetch(jobId, attempt, key, signal, sizeBytes) {
      // One fetch per cache at a time on this host: a second job of the same cache waits for it, and fetches
      // itself only if that one brought nothing (it failed, or was stopped with its job).
      for (let prior = inflight.get(key); prior; prior = inflight.get(key)) {
        const stopped = new Promise<CacheFetchMsg>((resolve) => signal?.addEventListener('abort', () => resolve({ outcome: 'failed', reason: 'the job was stopped' }), { once: true }));
        const r = await Promise.race([prior, stopped]);
        if (signal?.aborted) return { outcome: 'failed', reason: 'the job was stopped' };
        if (r.outcome === 'fetched' || r.outcome === 'none') return { outcome: 'none', reason: `another job on this host fetched it just before${r.version ? ` (version ${r.version})` : ''}` };
      }
      const p = fetchOne(jobId, attempt, key, signal, sizeBytes);
      inflight.set(key, p);
      try {
        return await p;
      } finally {
        if (inflight.get(key) === p) inflight.delete(key);
      }
    },
    handle(m) {
      switch (m.type) {
        case 'cache.incoming':
          return incoming(m);
        case 'cache.fetch.failed': {
          const f = fetches.get(m.fetchId);
          if (!f) return;
          if (m.from) f.from = m.from;
          // The relay ended it (and counted it): nothing to tell it back.
          f.writing = f.writing.then(() => settle(f, m.outcome, m.reason, false));
          return;
        }
        case 'cache.end':
          return ended(m);
        case 'cache.send':
          void serve(m);
          return;
        case 'cache.ack': {
          const s = sends.get(m.transferId);
          if (!s) return;
          s.acked = Math.max(s.acked, m.seq);
          s.wake?.();
          return;
        }
        case 'cache.abort': {
          const s = sends.get(m.transferId);
          if (s) {
            s.stopped = true;
            s.wake?.();
          }
          const f = byTransfer.get(m.transferId);
          if (f) settle(f, 'failed', m.reason, false);
          return;
        }
      }
    },
    chunk,
    disconnected() {
      for (const f of [...fetches.values()]) settle(f, 'failed', 'the connection to the server dropped during the fetch', false);
      for (const s of sends.values()) {
        s.stopped = true;
        s.wake?.();
      }
    },
    stop() {
      this.disconnected();
    },
  };
}
