/**
 * Host-to-host cache transfer (docs/caches.md, "Fetching a cache from a peer"): the server relays a cache
 * version from a peer host that holds it to the host a job was placed on, over the two agents' existing
 * WebSockets. The receiving agent asks (`cache.fetch`, for a job placed on it, for that job's own cache: the
 * key is the tenant's), the relay picks a peer connected to this replica whose current version is newer and
 * was committed by a job of the same tenant and key (its checksum comes from that job's stored result, not
 * from the peer), and asks it to send (`cache.send`). Chunks (binary frames, core/agent-protocol.ts
 * `decodeCacheChunkFrame`) are checked by their header and forwarded as the same bytes, never re-encoded nor
 * stored: the peer
 * may send at most `window` chunks past the receiver's last acknowledgement, so what the server holds per
 * transfer is bounded by the window (`kiln_cache_relay_bytes`), whatever the image's size. A peer that goes
 * away, stalls or breaks the protocol ends the transfer; the receiving job then starts on what its host has.
 */
import { randomBytes } from 'node:crypto';
import { CACHE_TRANSFER_VERSION, type AgentMessageOf, type CacheChunkFrame, type CacheFetchOutcome, type ServerMessage } from '../../core/agent-protocol.ts';
import { committedCacheVersion, getJob, type CommittedCacheVersion } from '../../store/jobs.ts';
import type { ServerContext } from '../context.ts';
import type { Connection } from './agent-connection.ts';
import type { HostLink, HostRegistry } from './host-registry.ts';

export const DEFAULT_RELAY_WINDOW_CHUNKS = 8;
export const DEFAULT_RELAY_STALL_MS = 30_000;
export const DEFAULT_RELAY_MAX_TRANSFERS = 8;
/**
 * While more than this is queued on a receiving host's socket (sent by the server, not yet taken by the
 * kernel: the host reads slowly, or not at all while it acknowledges), the relay holds back the receiver's
 * acknowledgements from the peer, so the peer sends nothing more and the server's memory stays bounded by
 * this plus the window, whatever the receiver does.
 */
export const DEFAULT_RELAY_MAX_BUFFERED_BYTES = 4 * 1024 * 1024;
/** How often a held-back transfer looks at its receiver's socket again. */
const HOLD_RECHECK_MS = 25;
/**
 * Transfers one host may be part of at once, as the sender and (separately) as the receiver: one host's
 * jobs cannot take the whole relay, nor can every receiver pile onto the one peer that holds a cache. A
 * fetch over it falls back like one over the relay's cap (outcome `none`, the job starts on what its host has).
 */
export const DEFAULT_RELAY_MAX_PER_HOST = 2;

interface Transfer {
  id: string;
  fetchId: string;
  jobId: number;
  key: string;
  version: string;
  sha256: string;
  /** The job that committed the version, as the server stored it: the peer's record must name it, and the receiver gets this record, not the peer's. */
  writer: CommittedCacheVersion;
  receiver: HostLink;
  peer: HostLink;
  phase: 'asked' | 'streaming' | 'ended';
  nextSeq: number;
  /** The receiver's highest acknowledgement. */
  acked: number;
  /** The highest acknowledgement passed on to the peer (the peer's window counts from it). */
  peerAcked: number;
  /** Set while acknowledgements are held back (the receiver's socket is over its bound). */
  hold?: NodeJS.Timeout;
  /** Bytes of each forwarded chunk not yet acknowledged, by seq. */
  inFlight: Map<number, number>;
  inFlightBytes: number;
  peakInFlightBytes: number;
  bytes: number;
  stall?: NodeJS.Timeout;
}

type TransferMsg = AgentMessageOf<'cache.offer' | 'cache.end' | 'cache.abort' | 'cache.ack' | 'cache.received'>;

export interface CacheRelay {
  /** A receiving agent asks for a newer version of its job's cache. */
  fetch(c: Connection, l: HostLink, m: AgentMessageOf<'cache.fetch'>): Promise<void>;
  /** Everything else of a transfer, from either side, but chunks. */
  message(c: Connection, l: HostLink, m: TransferMsg): void;
  /** A chunk frame from the sending peer, decoded (`chunk`) and as it came (`frame`: what is forwarded). */
  chunk(c: Connection, l: HostLink, chunk: CacheChunkFrame, frame: Buffer): void;
  /** A host's connection closed: its transfers end. */
  closed(l: HostLink): void;
  close(): void;
  /** Transfers under way and bytes in flight (tests, /metrics). */
  stats(): { transfers: number; inFlightBytes: number };
}

/** The time a version id begins with (cache-store.ts makes ids as base-36 milliseconds, a dash, random hex), or undefined. */
const versionTime = (v: string): string | undefined => {
  const ms = parseInt(v.split('-')[0] ?? '', 36);
  return Number.isFinite(ms) && ms > 0 && ms < 8.64e15 ? new Date(ms).toISOString() : undefined;
};

export function makeCacheRelay(ctx: ServerContext, registry: HostRegistry): CacheRelay {
  const o = ctx.options.cacheRelay ?? {};
  const window = o.windowChunks ?? DEFAULT_RELAY_WINDOW_CHUNKS;
  const stallMs = o.stallMs ?? DEFAULT_RELAY_STALL_MS;
  const maxTransfers = o.maxTransfers ?? DEFAULT_RELAY_MAX_TRANSFERS;
  const maxBuffered = o.maxBufferedBytes ?? DEFAULT_RELAY_MAX_BUFFERED_BYTES;
  const maxPerHost = o.maxPerHost ?? DEFAULT_RELAY_MAX_PER_HOST;
  // A transfer the peer has sent whole ('ended': the receiver checks it) no longer takes a sending slot.
  const sending = (p: HostLink) => [...transfers.values()].filter((t) => t.peer === p && t.phase !== 'ended').length;
  const receiving = (l: HostLink) => [...transfers.values()].filter((t) => t.receiver === l).length;
  /** Why a fetch must wait for a slot (the relay's cap, or the receiver's), or undefined. */
  const full = (l: HostLink): string | undefined =>
    transfers.size >= maxTransfers
      ? `the server relays ${maxTransfers} cache transfers already`
      : receiving(l) >= maxPerHost
        ? `this host receives ${maxPerHost} cache transfers already`
        : undefined;
  const transfers = new Map<string, Transfer>();
  const m = ctx.metrics;
  let inFlightTotal = 0;

  /** Answers a fetch that does not start; `tv`: the version the fetch named (an agent of another version reads its refusal). */
  const failFetch = (l: HostLink, fetchId: string, outcome: CacheFetchOutcome, reason: string, from?: string, tv: number = CACHE_TRANSFER_VERSION) => {
    m.cacheTransfers.inc({ outcome });
    l.send({ type: 'cache.fetch.failed', tv, fetchId, outcome, reason: reason.slice(0, 500), ...(from ? { from } : {}) });
  };

  const release = (t: Transfer, upTo: number) => {
    for (const [seq, n] of t.inFlight) {
      if (seq > upTo) continue;
      t.inFlight.delete(seq);
      t.inFlightBytes -= n;
      inFlightTotal -= n;
    }
    m.cacheRelayBytes.set(inFlightTotal);
  };

  /** Ends a transfer: counted once, the stall timer stopped, either side told as needed. */
  const end = (t: Transfer, outcome: CacheFetchOutcome, reason: string | undefined, tell: { receiver?: boolean; peer?: boolean }) => {
    if (!transfers.delete(t.id)) return;
    if (t.stall) clearTimeout(t.stall);
    if (t.hold) clearTimeout(t.hold);
    release(t, Number.MAX_SAFE_INTEGER);
    m.cacheTransfers.inc({ outcome });
    if (tell.receiver) t.receiver.send({ type: 'cache.fetch.failed', tv: CACHE_TRANSFER_VERSION, fetchId: t.fetchId, outcome, reason: (reason ?? outcome).slice(0, 500), from: t.peer.name });
    if (tell.peer) t.peer.send({ type: 'cache.abort', tv: CACHE_TRANSFER_VERSION, transferId: t.id, reason: (reason ?? 'the transfer ended').slice(0, 500) });
    const log = ctx.log.child({ jobId: t.jobId, cache: t.key, version: t.version, from: t.peer.name, to: t.receiver.name });
    if (outcome === 'fetched') log.info({ bytes: t.bytes, peakInFlightBytes: t.peakInFlightBytes }, 'cache version relayed between hosts');
    else log.warn({ outcome, reason, bytes: t.bytes }, 'cache transfer ended without the version');
    ctx.events.emit('cache.transfer', {
      transferId: t.id,
      key: t.key,
      version: t.version,
      from: t.peer.name,
      to: t.receiver.name,
      jobId: t.jobId,
      outcome,
      bytes: t.bytes,
      peakInFlightBytes: t.peakInFlightBytes,
      ...(reason ? { reason } : {}),
    });
  };

  const progress = (t: Transfer) => {
    if (t.stall) clearTimeout(t.stall);
    // Once everything was relayed the receiver checks, syncs and renames a possibly large image: it gets ten
    // times as long before the relay gives up on hearing how that went.
    const ms = t.phase === 'ended' ? stallMs * 10 : stallMs;
    t.stall = setTimeout(() => end(t, 'timeout', `the transfer from ${t.peer.name} made no progress for ${Math.round(ms / 1000)} s`, { receiver: true, peer: true }), ms);
    t.stall.unref();
  };

  /**
   * Passes the receiver's acknowledgement on to the peer, unless the receiver's socket holds more than its
   * bound: then it waits (looking again every HOLD_RECHECK_MS) until the socket drained, so a receiver that
   * acknowledges what it has not read cannot make the server buffer the image.
   */
  const pump = (t: Transfer) => {
    if (t.hold || t.acked <= t.peerAcked || !transfers.has(t.id)) return;
    if ((t.receiver.bufferedBytes?.() ?? 0) > maxBuffered) {
      t.hold = setTimeout(() => {
        t.hold = undefined;
        pump(t);
      }, HOLD_RECHECK_MS);
      t.hold.unref();
      return;
    }
    t.peerAcked = t.acked;
    t.peer.send({ type: 'cache.ack', tv: CACHE_TRANSFER_VERSION, transferId: t.id, seq: t.acked });
  };

  /** The peer broke the transfer protocol: the transfer ends, both sides are told. */
  const broke = (t: Transfer, why: string) => end(t, 'failed', `${t.peer.name} broke the transfer protocol: ${why}`, { receiver: true, peer: true });

  /** A message naming a transfer its sender is not the right side of: refused and counted, never relayed. */
  const forged = (c: Connection, l: HostLink, msg: { type: TransferMsg['type'] | 'cache.chunk' }, t: Transfer) => {
    const code = 'cache.transfer_forged';
    m.agentProtocolErrors.inc({ code });
    c.log().warn({ type: msg.type, transferId: t.id, host: l.name }, 'an agent sent a cache transfer message for a transfer it is not part of; refused');
    c.send({ type: 'error', code, message: `${msg.type} refused: this host is not the ${msg.type === 'cache.ack' || msg.type === 'cache.received' ? 'receiver' : 'sender'} of that transfer` });
  };

  return {
    async fetch(c, l, msg) {
      const refuse = (why: string) => {
        c.log().warn({ jobId: msg.jobId, cache: msg.key, why }, 'cache fetch refused');
        failFetch(l, msg.fetchId, 'refused', why, undefined, msg.tv);
      };
      if (l.active.get(msg.jobId)?.attempt !== msg.attempt) return refuse(`job ${msg.jobId} (attempt ${msg.attempt}) is not placed on this host`);
      // The key is the job's own (tenant-prefixed when it was submitted): an agent cannot name another's.
      const job = await getJob(ctx.store.db, msg.jobId);
      if (!job?.cache || job.cache.key !== msg.key || job.attempt !== msg.attempt) return refuse(`cache "${msg.key.slice(0, 100)}" is not job ${msg.jobId}'s cache`);
      if (l.cacheTransfer === undefined) return refuse('this agent did not say in its hello that it speaks the cache transfer protocol');
      if (l.cacheTransfer !== CACHE_TRANSFER_VERSION || msg.tv !== CACHE_TRANSFER_VERSION) {
        const spoken = msg.tv !== CACHE_TRANSFER_VERSION ? msg.tv : l.cacheTransfer;
        return refuse(`this agent speaks cache transfer version ${spoken}, the server version ${CACHE_TRANSFER_VERSION}: run the same kiln version on agents and servers`);
      }
      const busy = full(l);
      if (busy) return failFetch(l, msg.fetchId, 'none', busy);
      const peers = [...registry.links.values()]
        .flatMap((p) => {
          const v = p.cacheVersions?.get(msg.key);
          return p !== l && p.ready && p.cacheTransfer === CACHE_TRANSFER_VERSION && v !== undefined && (msg.have === undefined || v > msg.have) ? [{ p, v }] : [];
        })
        .sort((a, b) => (a.v === b.v ? sending(a.p) - sending(b.p) : a.v < b.v ? 1 : -1));
      let peersBusy = 0;
      const known = new Map<string, CommittedCacheVersion | undefined>();
      for (const { p, v } of peers) {
        if (!known.has(v)) known.set(v, await committedCacheVersion(ctx.store.db, job.tenant, msg.key, v));
        const rec = known.get(v);
        if (!rec) continue;
        if (!p.ready || registry.get(p.hostId) !== p || c.closed) continue;
        // Checked again here, with no await between it and the transfer's entry: fetches that raced through
        // the awaits above (one job's, repeated) must not pass the caps or start a second transfer for a job.
        const busyNow = full(l);
        if (busyNow) return failFetch(l, msg.fetchId, 'none', busyNow);
        if (sending(p) >= maxPerHost) {
          peersBusy++;
          continue;
        }
        if ([...transfers.values()].some((x) => x.receiver === l && x.jobId === msg.jobId && x.phase !== 'ended')) return refuse(`job ${msg.jobId} has a cache transfer under way already`);
        const t: Transfer = {
          id: randomBytes(16).toString('base64url'),
          fetchId: msg.fetchId,
          jobId: msg.jobId,
          key: msg.key,
          version: v,
          sha256: rec.sha256,
          writer: rec,
          receiver: l,
          peer: p,
          phase: 'asked',
          nextSeq: 0,
          acked: -1,
          peerAcked: -1,
          inFlight: new Map(),
          inFlightBytes: 0,
          peakInFlightBytes: 0,
          bytes: 0,
        };
        transfers.set(t.id, t);
        progress(t);
        c.log().info({ jobId: msg.jobId, cache: msg.key, version: v, from: p.name }, 'fetching a cache version from a peer host');
        ctx.events.emit('cache.transfer', { transferId: t.id, key: t.key, version: v, from: p.name, to: l.name, jobId: msg.jobId });
        p.send({ type: 'cache.send', tv: CACHE_TRANSFER_VERSION, transferId: t.id, key: msg.key, version: v, window });
        return;
      }
      if (peersBusy > 0) return failFetch(l, msg.fetchId, 'none', `the peer hosts that hold it send ${maxPerHost} cache transfers already`);
      if (peers.length > 0) return failFetch(l, msg.fetchId, 'none', 'no peer host holds a newer version committed by a job of this cache');
      // Peers that hold a newer version but speak another transfer version are never asked: say so.
      const otherVersion = [...registry.links.values()].filter((p) => {
        const v = p.cacheVersions?.get(msg.key);
        return p !== l && p.ready && p.cacheTransfer !== undefined && p.cacheTransfer !== CACHE_TRANSFER_VERSION && v !== undefined && (msg.have === undefined || v > msg.have);
      });
      const named = otherVersion.slice(0, 3).map((p) => `${p.name} (version ${p.cacheTransfer})`).join(', ');
      failFetch(
        l,
        msg.fetchId,
        'none',
        otherVersion.length > 0
          ? `no connected peer host that speaks cache transfer version ${CACHE_TRANSFER_VERSION} holds a newer version of this cache; peers that hold one speak another version: ${named}${otherVersion.length > 3 ? ', …' : ''}`
          : 'no connected peer host holds a newer version of this cache',
      );
    },

    message(c, l, msg) {
      const t = transfers.get(msg.transferId);
      // An unknown id: a message that crossed the transfer's end (normal), or a guess (ids are 128 random bits).
      if (!t) return;
      const fromPeer = msg.type === 'cache.offer' || msg.type === 'cache.end' || msg.type === 'cache.abort';
      if ((fromPeer ? t.peer : t.receiver) !== l) return forged(c, l, msg, t);
      switch (msg.type) {
        case 'cache.offer': {
          if (t.phase !== 'asked') return broke(t, 'a second offer');
          if (msg.version !== t.version) return broke(t, `it offered version ${msg.version}, not ${t.version}`);
          if (msg.record.jobId !== String(t.writer.jobId)) return end(t, 'refused', `${t.peer.name}'s record of version ${t.version} names another writer than job ${t.writer.jobId}`, { receiver: true, peer: true });
          if (msg.sha256 !== t.sha256) return end(t, 'checksum', `${t.peer.name}'s copy of version ${t.version} does not carry the checksum its commit recorded`, { receiver: true, peer: true });
          t.phase = 'streaming';
          progress(t);
          // Who wrote it comes from the server's rows (the committing job's), never from the peer: only the
          // version's time is the peer's, and only as its id dates it (ids begin with their time).
          const { jobId, ref, commit, by } = t.writer;
          const record = { createdAt: versionTime(t.version) ?? msg.record.createdAt, jobId: String(jobId), ...(ref ? { ref } : {}), ...(commit ? { commit } : {}), ...(by ? { by } : {}) };
          if (msg.record.ref !== record.ref || msg.record.commit !== record.commit || msg.record.by !== record.by) {
            c.log().warn({ version: t.version, peerRecord: msg.record, record }, 'a peer\'s record of a cache version differs from the committing job\'s; the receiver gets the server\'s');
          }
          t.receiver.send({ type: 'cache.incoming', tv: CACHE_TRANSFER_VERSION, fetchId: t.fetchId, transferId: t.id, from: t.peer.name, key: t.key, version: t.version, length: msg.length, sha256: t.sha256, record });
          return;
        }
        case 'cache.end':
          if (t.phase !== 'streaming') return broke(t, 'an end outside the stream');
          if (msg.chunks !== t.nextSeq) return broke(t, `it ended after ${msg.chunks} chunks but sent ${t.nextSeq}`);
          t.phase = 'ended';
          progress(t);
          t.receiver.send(msg as ServerMessage);
          return;
        case 'cache.abort':
          return end(t, 'failed', `${t.peer.name} could not send it: ${msg.reason}`, { receiver: true });
        case 'cache.ack':
          if (msg.seq >= t.nextSeq || msg.seq <= t.acked) return; // stale or ahead of what was sent: nothing to release
          t.acked = msg.seq;
          release(t, msg.seq);
          progress(t);
          pump(t);
          return;
        case 'cache.received':
          // The receiver's word on how it ended (checked the checksum itself); the peer is told only if still sending.
          return end(t, msg.outcome, msg.reason, { peer: t.phase !== 'ended' || msg.outcome !== 'fetched' });
      }
    },

    chunk(c, l, { header: h, data }, frame) {
      const t = transfers.get(h.transferId);
      // An unknown id: a chunk that crossed the transfer's end (normal), or a guess (ids are 128 random bits).
      if (!t) return;
      if (t.peer !== l) return forged(c, l, h, t);
      if (t.phase !== 'streaming') return broke(t, 'a chunk outside the stream');
      if (h.seq !== t.nextSeq) return broke(t, `chunk ${h.seq} where ${t.nextSeq} was due`);
      if (h.seq > t.peerAcked + window) return broke(t, `chunk ${h.seq} past the window (acknowledged up to ${t.peerAcked}, window ${window})`);
      const n = data.length;
      t.nextSeq++;
      t.inFlight.set(h.seq, n);
      t.inFlightBytes += n;
      inFlightTotal += n;
      t.peakInFlightBytes = Math.max(t.peakInFlightBytes, t.inFlightBytes);
      t.bytes += n;
      m.cacheTransferBytes.inc(n);
      m.cacheRelayBytes.set(inFlightTotal);
      progress(t);
      // The frame as the peer sent it: the receiver decodes and checks it again (it trusts no relay more than a peer).
      t.receiver.sendBinary(frame);
    },

    closed(l) {
      for (const t of [...transfers.values()]) {
        if (t.peer === l) end(t, 'peer_gone', `the peer host ${l.name} disconnected during the transfer`, { receiver: true });
        else if (t.receiver === l) end(t, 'failed', `the receiving host ${l.name} disconnected`, { peer: true });
      }
    },
    close() {
      for (const t of transfers.values()) if (t.stall) clearTimeout(t.stall);
      transfers.clear();
    },
    stats: () => ({ transfers: transfers.size, inFlightBytes: inFlightTotal }),
  };
}
