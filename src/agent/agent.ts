/**
 * `kiln agent`: one per host. Dials the server (one WebSocket, join token in the Authorization header),
 * says hello with its capacity and what it runs, then launches and stops VMs on command. Reconnects with
 * backoff (rotating through the server URLs it was given, so any replica will do), and after every
 * reconnect the server reconciles against the hello.
 */
import { EventEmitter, once } from 'node:events';
import { hostname } from 'node:os';
import { join } from 'node:path';
import type { Logger } from 'pino';
import WebSocket from 'ws';
import { archFromNode, type Arch } from '../core/arch.ts';
import {
  CACHE_TRANSFER_VERSION,
  PROTOCOL_VERSION,
  CLOSE_HOST_REFUSED,
  CLOSE_HOST_REMOVED,
  MAX_MESSAGE_BYTES,
  decodeCacheChunkFrame,
  encodeMessage,
  makeServerMessageDecoder,
  type CacheChunkFrame,
  type AgentMessage,
  type HostCapacity,
  type HostPowerMsg,
  type JobResultMsg,
  type HostCacheMsg,
  type MirrorStatusMsg,
  type OtherMirrorStatusMsg,
  type ServerMessage,
} from '../core/agent-protocol.ts';
import { KilnError, toKilnError } from '../core/errors.ts';
import type { CacheStore } from '../vm/cache-store.ts';
import type { VmDriver } from '../vm/driver.ts';
import type { ImageResolver } from './images.ts';
import type { MirrorStatus, RegistryMirror } from './mirror.ts';
import { makeOutputLog } from './output-log.ts';
import { makeSupervisor, type Supervisor } from './supervisor.ts';
import { hostPowerReport, type AgentPowerOptions } from './power.ts';
import { sendMagicPacket } from '../proc/wake-on-lan.ts';
import { commandFailure, runShellCommand } from '../proc/shell-command.ts';
import { KILN_VERSION } from '../core/version.ts';
import { MIRROR_GUEST_ADDRESS, MIRROR_GUEST_IP, MIRROR_GUEST_PORT, mirrorVmSettings } from '../vm/forwards.ts';
import { readCredential, writeCredential } from './credential-file.ts';
import * as tls from 'node:tls';
import { makeSnapshotPlanner, type SnapshotShape } from './snapshots.ts';
import { makeCacheTransfers, type CacheTransferOptions } from './cache-transfer.ts';

export interface AgentOptions {
  /** Server base URLs (http(s):// or ws(s)://); the agent rotates through them on failure. */
  servers: string[];
  /** CA certificates (PEM) to trust for https/wss servers besides the system's (--ca, KILN_CA). */
  ca?: Buffer;
  token: string;
  name?: string;
  /** Host arch to advertise; defaults to this machine's. */
  arch?: Arch;
  labels?: string[];
  /** Override what the driver reports (a host may keep some capacity for itself). */
  cpus?: number;
  memoryBytes?: number;
  diskBytes?: number;
  driver: VmDriver;
  images: ImageResolver;
  logger: Logger;
  /** Reconnect backoff bounds. */
  minBackoffMs?: number;
  maxBackoffMs?: number;
  /** Drop the connection when the server is silent this long (it pings every few seconds). */
  silenceMs?: number;
  /**
   * The host's registry mirror (supervised here: started with the agent, stopped with it). Every VM gets a
   * forward of `MIRROR_GUEST_ADDRESS` to the mirror's host port and that address as its registry mirror.
   */
  mirror?: RegistryMirror;
  /**
   * More mirrors, one per registry (ghcr.io, quay.io, …; each RegistryMirror names its registry), supervised
   * the same way. Every VM gets their forwards and addresses too (mirrorVmSettings in src/vm/forwards.ts).
   */
  mirrors?: RegistryMirror[];
  /** How often host.status is sent (default 15 s); mirror health changes are sent as they are seen. */
  statusIntervalMs?: number;
  /** How often the mirror's health is probed for changes (default 2 s). */
  healthPollMs?: number;
  /** The host's power driver (default none: the host never sleeps). See docs/power.md. */
  power?: AgentPowerOptions;
  /**
   * Where job output the server has not yet acknowledged spills to disk past `outputMemoryBytes` (the
   * agent's data directory; `kiln agent` passes <data-dir>/output). Without one, output past the limit is
   * dropped while disconnected, and counted in the log.
   */
  outputSpillDir?: string;
  /** Unacknowledged output kept in memory before it spills (default 64 MiB). */
  outputMemoryBytes?: number;
  /**
   * A directory (the data directory) where the host credential the server issues at first registration is
   * kept, as `<name>.host-credential` (mode 0600), so the host is still itself after a restart. Unset: kept
   * in memory only (lost with the process).
   */
  credentialDir?: string;
  /**
   * The data directory, where the warm-start planner keeps its usage counts. With a driver that restores from
   * snapshots (`driver.snapshots`), the agent builds them ahead of need (src/agent/snapshots.ts) and reports
   * their state in host.status.
   */
  dataDir?: string;
  /** The host's warm caches (docs/caches.md): used by jobs that ask for one, reported in hello and host.status. */
  caches?: CacheStore;
  /**
   * Host-to-host cache transfers (cache-transfer.ts), on whenever the host keeps caches: its bounds, or false to
   * neither fetch nor serve caches.
   */
  cacheTransfer?: CacheTransferOptions | false;
}

/** What the protocol carries of the caches a host holds (for placement and `kiln caches ls`). */
export function hostCachesMsg(store: CacheStore): HostCacheMsg[] {
  return store
    .list()
    .sort((a, b) => b.lastUsedAt.localeCompare(a.lastUsedAt))
    .slice(0, 1000)
    .map((c) => ({
      key: c.key,
      ...(c.current ? { version: c.current.id } : {}),
      bytes: c.bytes,
      sizeBytes: c.sizeBytes,
      versions: c.versions.length,
      lastUsedAt: c.lastUsedAt,
      ...(c.current ? { writer: [c.current.jobId ? `job ${c.current.jobId}` : '', c.current.ref ?? '', c.current.commit?.slice(0, 12) ?? '', c.current.by ?? ''].filter(Boolean).join(' ').slice(0, 400) } : {}),
    }));
}

/** Where every guest reaches the host's mirror (a forward to the mirror's host port, even with the network closed). */
export { MIRROR_GUEST_ADDRESS, MIRROR_GUEST_IP, MIRROR_GUEST_PORT };

/**
 * What the protocol carries of a host's mirrors' status: the first mirror's, with the others in `others`; no
 * process output (it stays in the agent's log).
 */
export function mirrorStatusMsg(s: MirrorStatus, others: MirrorStatus[] = []): MirrorStatusMsg {
  const one = (x: MirrorStatus): OtherMirrorStatusMsg => {
    const m: OtherMirrorStatusMsg = { state: x.state, healthy: x.healthy, restarts: x.restarts, cacheBytes: x.cacheBytes, upstream: x.upstream, address: x.address };
    if (x.guestAddress) m.guestAddress = x.guestAddress;
    if (x.pid !== undefined) m.pid = x.pid;
    if (x.lastExit) m.lastExit = { code: x.lastExit.code, signal: x.lastExit.signal, at: x.lastExit.at };
    if (x.registry) m.registry = x.registry;
    return m;
  };
  return { ...one(s), ...(others.length > 0 ? { others: others.map(one) } : {}) };
}

/** The host port of a mirror listening on loopback or all interfaces (guestfwd connects to 127.0.0.1). */
export function mirrorHostPort(listen: string): number {
  const c = listen.lastIndexOf(':');
  const host = listen.slice(0, c).replace(/^\[|\]$/g, '');
  const port = Number(listen.slice(c + 1));
  if (!(/^127\./.test(host) || host === 'localhost' || host === '::1' || host === '0.0.0.0' || host === '::') || !Number.isInteger(port) || port < 1 || port > 65535) {
    throw new KilnError('mirror.listen_unreachable', `the mirror listens on ${listen}, which guests cannot be forwarded to`, {
      hint: 'listen on loopback (e.g. --mirror-listen 127.0.0.1:5000): VMs reach it through a forward to 127.0.0.1',
    });
  }
  return port;
}

export interface AgentEvents {
  connected: [{ hostId: number; serverId: string }];
  disconnected: [{ code: number; reason: string }];
  rejected: [{ status: number; code: string; message: string }];
  launched: [{ jobId: number; attempt: number }];
  finished: [JobResultMsg];
  'protocol-error': [{ code: string; message: string }];
  /** Drained and told the server; the sleep command runs next. */
  sleeping: [{ requestId: number }];
  /** The sleep command returned (the host woke up, or the command failed: `error`). */
  awake: [{ requestId: number; error?: string }];
}

export interface Agent {
  readonly events: EventEmitter<AgentEvents>;
  start(): Promise<void>;
  stop(): Promise<void>;
  /** Resolves at the next `connected`. */
  connected(timeoutMs?: number): Promise<{ hostId: number; serverId: string }>;
  isConnected(): boolean;
  capacity(): HostCapacity | undefined;
}

export function agentUrl(base: string): string {
  const u = new URL(base);
  u.protocol = u.protocol === 'https:' || u.protocol === 'wss:' ? 'wss:' : 'ws:';
  u.pathname = `${u.pathname.replace(/\/$/, '')}/v1/agent/connect`;
  return u.toString();
}

export function makeAgent(o: AgentOptions): Agent {
  if (o.servers.length === 0) throw new KilnError('config.no_server', 'the agent needs a server URL', { hint: 'pass --server URL' });
  const events = new EventEmitter<AgentEvents>();
  const log = o.logger.child({ part: 'agent' });
  const decoder = makeServerMessageDecoder();
  let ws: WebSocket | undefined;
  let welcomed = false;
  let stopping = false;
  let attempt = 0;
  let serverIndex = 0;
  let reconnectTimer: NodeJS.Timeout | undefined;
  let silenceTimer: NodeJS.Timeout | undefined;
  let cap: HostCapacity | undefined;
  /** The last error message the server sent (the reason for a refusal that follows). */
  let refusal: string | undefined;
  let credentialFile: string | undefined;
  let credential: string | undefined;
  /**
   * Phases produced while not connected. Output is kept in `output` until the server acknowledges it,
   * start requests and results in the supervisor until answered: all are resent after the next welcome.
   */
  let outbox: AgentMessage[] = [];
  const OUTBOX_LIMIT = 100_000;
  const output = makeOutputLog({
    ...(o.outputSpillDir ? { spillDir: o.outputSpillDir } : {}),
    ...(o.outputMemoryBytes !== undefined ? { memoryLimitBytes: o.outputMemoryBytes } : {}),
  });
  /** Set while the host sleeps: the connection stays closed until the sleep command returns. */
  let asleep = false;
  let powerReport: HostPowerMsg | undefined;
  /** A sleep that failed, told to the server after the next welcome. */
  let powerError: { requestId: number; message: string } | undefined;

  const send = (m: AgentMessage) => {
    if (m.type === 'job.log') output.add(m);
    if (ws && welcomed && ws.readyState === WebSocket.OPEN) {
      ws.send(encodeMessage(m));
      return;
    }
    if (m.type !== 'job.phase') return; // output, start requests and results are resent after the next welcome
    if (outbox.length < OUTBOX_LIMIT) outbox.push(m);
  };

  // Docker Hub's mirror first (it is the one `mirror` reports), then the other registries' in their order.
  const mirrors = [...(o.mirror ? [o.mirror] : []), ...(o.mirrors ?? [])].sort((a, b) => Number(b.registry === 'docker.io') - Number(a.registry === 'docker.io'));
  const seen = new Set<string>();
  for (const m of mirrors) {
    if (seen.has(m.registry)) throw new KilnError('mirror.registry_twice', `two mirrors for ${m.registry}`, { hint: 'list each registry once in --mirror-upstream' });
    seen.add(m.registry);
  }
  // Snapshot states are sent as they change, at most one host.status per 200 ms for them.
  let snapshotReport: NodeJS.Timeout | undefined;
  const planner =
    o.driver.snapshots && o.dataDir
      ? makeSnapshotPlanner({
          port: o.driver.snapshots,
          images: o.images,
          dataDir: o.dataDir,
          log: log.child({ part: 'snapshots' }),
          changed: () => (snapshotReport ??= setTimeout(() => ((snapshotReport = undefined), void reportStatus()), 200)),
        })
      : undefined;
  /** Sends now if the connection is up (cache transfers: nothing of theirs is queued across a reconnect). */
  const sendNow = (m: AgentMessage): boolean => {
    if (!ws || !welcomed || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(encodeMessage(m));
    return true;
  };
  /** A cache chunk frame, binary, on the same terms as sendNow. */
  const sendChunkNow = (frame: Buffer): boolean => {
    if (!ws || !welcomed || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(frame, { binary: true });
    return true;
  };
  const transfers = o.caches && o.cacheTransfer !== false ? makeCacheTransfers({ store: o.caches, send: sendNow, sendChunk: sendChunkNow, log, ...(o.cacheTransfer ? { options: o.cacheTransfer } : {}) }) : undefined;
  const supervisor: Supervisor = makeSupervisor({
    ...(transfers ? { fetchCache: (jobId: number, a: number, key: string, signal: AbortSignal, sizeBytes?: number) => transfers.fetch(jobId, a, key, signal, sizeBytes) } : {}),
    ...(mirrors.length > 0 ? { vm: mirrorVmSettings(mirrors.map((m) => ({ registry: m.registry, hostPort: mirrorHostPort(m.listen) }))) } : {}),
    driver: o.driver,
    images: o.images,
    ...(o.caches ? { caches: o.caches } : {}),
    send,
    log,
    ...(planner ? { noteUse: (shape: SnapshotShape) => planner.noteUse(shape) } : {}),
    events: {
      launched: (jobId, a) => events.emit('launched', { jobId, attempt: a }),
      finished: (r) => {
        events.emit('finished', r);
        // A job that used a cache changed what this host holds: placement hears of it now, not in 15 s.
        if (r.cache) void reportStatus();
      },
    },
  });

  // Mirror status: in hello, every statusIntervalMs, and when a health probe sees a change.
  let lastMirror: MirrorStatusMsg | undefined;
  let statusTimer: NodeJS.Timeout | undefined;
  let healthTimer: NodeJS.Timeout | undefined;
  let reporting: Promise<void> | undefined;
  const mirrorStatus = async (): Promise<MirrorStatusMsg | undefined> => {
    const [first, ...others] = await Promise.all(mirrors.map((m) => m.status()));
    if (!first) return undefined;
    lastMirror = mirrorStatusMsg(first, others);
    return lastMirror;
  };
  /** The image versions the host holds (a store that cannot be read reports none, with a warning). */
  const heldImages = () => {
    try {
      return o.images.held?.();
    } catch (e) {
      log.warn({ err: e }, 'could not list the host\'s images');
      return undefined;
    }
  };
  const reportStatus = (): Promise<void> =>
    (reporting ??= (async () => {
      try {
        const mirror = await mirrorStatus();
        const snapshots = planner?.states();
        const caches = o.caches ? hostCachesMsg(o.caches) : undefined;
        const images = heldImages();
        if (ws && welcomed && ws.readyState === WebSocket.OPEN && !stopping) {
          ws.send(encodeMessage({ type: 'host.status', ...(mirror ? { mirror } : {}), ...(snapshots ? { snapshots } : {}), ...(caches ? { caches } : {}), ...(images ? { images } : {}) }));
        }
      } catch (e) {
        log.warn({ err: e }, 'could not report the host status');
      } finally {
        reporting = undefined;
      }
    })());
  const watchHealth = async () => {
    if (mirrors.length === 0 || stopping) return;
    const healthy = await Promise.all(mirrors.map((m) => m.health()));
    const last = lastMirror ? [lastMirror.healthy, ...(lastMirror.others ?? []).map((x) => x.healthy)] : undefined;
    if (last && healthy.some((h, i) => h !== last[i])) {
      log.info({ healthy: Object.fromEntries(mirrors.map((m, i) => [m.registry, healthy[i]])) }, 'mirror health changed');
      await reportStatus();
    }
  };

  async function capacity(): Promise<HostCapacity> {
    const c = await o.driver.capabilities();
    const arch = o.arch ?? c.arches.find((a) => a.accel === 'kvm')?.arch ?? archFromNode(process.arch) ?? 'amd64';
    const a = c.arches.find((x) => x.arch === arch);
    return {
      name: o.name ?? hostname().replace(/[^A-Za-z0-9._-]/g, '-').slice(0, 100),
      arch,
      cpus: o.cpus ?? c.cpus,
      memoryBytes: o.memoryBytes ?? c.memoryBytes,
      diskBytes: o.diskBytes ?? c.diskFreeBytes,
      accel: a?.accel ?? 'none',
      labels: o.labels ?? [],
      driver: o.driver.name,
      agentVersion: KILN_VERSION,
    };
  }

  const resetSilence = () => {
    if (silenceTimer) clearTimeout(silenceTimer);
    silenceTimer = setTimeout(() => {
      log.warn('the server went silent; reconnecting');
      ws?.terminate();
    }, o.silenceMs ?? 20_000);
  };

  function connect(): void {
    if (stopping) return;
    const base = o.servers[serverIndex % o.servers.length]!;
    const url = agentUrl(base);
    welcomed = false;
    const sock = new WebSocket(url, { headers: { authorization: `Bearer ${o.token}` }, maxPayload: MAX_MESSAGE_BYTES + 1024, handshakeTimeout: 10_000, ...(o.ca ? { ca: withSystemCas(o.ca) } : {}) });
    ws = sock;
    sock.on('unexpected-response', (_req, res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => {
        let code = `http.${res.statusCode ?? 0}`;
        let message = body.slice(0, 300);
        try {
          const e = (JSON.parse(body) as { error?: { code: string; message: string } }).error;
          if (e) ({ code, message } = e);
        } catch {
          /* not our error body */
        }
        log.error({ status: res.statusCode, code, msg: message }, 'the server refused the agent');
        events.emit('rejected', { status: res.statusCode ?? 0, code, message });
        sock.terminate();
      });
    });
    sock.on('open', () => {
      log.info({ url }, 'connected; saying hello');
      attempt = 0;
      resetSilence();
      void (async () => {
        const mirror = await mirrorStatus().catch(() => lastMirror);
        const images = heldImages();
        if (sock.readyState !== WebSocket.OPEN) return;
        sock.send(
          encodeMessage({
            type: 'hello',
            protocol: PROTOCOL_VERSION,
            host: cap!,
            ...(credential ? { credential } : {}),
            running: supervisor.running(),
            finished: [],
            ...(mirror ? { mirror } : {}),
            power: powerReport!,
            ...(planner ? { snapshots: planner.states() } : {}),
            ...(o.caches ? { caches: hostCachesMsg(o.caches) } : {}),
            ...(transfers ? { cacheTransfer: CACHE_TRANSFER_VERSION } : {}),
            ...(images ? { images } : {}),
          }),
        );
      })();
    });
    sock.on('ping', resetSilence);
    sock.on('message', (data, isBinary) => {
      resetSilence();
      let m: ServerMessage | undefined;
      let chunk: CacheChunkFrame | undefined;
      try {
        // Binary frames are cache chunk frames relayed from a peer; everything else is JSON text.
        if (isBinary) chunk = decodeCacheChunkFrame(data as Buffer);
        else m = decoder.decode(data as Buffer);
      } catch (e) {
        const k = toKilnError(e);
        log.error({ code: k.code, msg: k.message }, 'the server sent a message this agent does not understand');
        events.emit('protocol-error', { code: k.code, message: k.message });
        sock.close(1008, k.code);
        return;
      }
      if (chunk) transfers?.chunk(chunk);
      else if (m) handle(sock, m);
    });
    sock.on('error', (e) => log.debug({ err: e.message }, 'connection error'));
    sock.on('close', (code, reason) => {
      if (silenceTimer) clearTimeout(silenceTimer);
      if (ws !== sock) return;
      const wasWelcomed = welcomed;
      welcomed = false;
      ws = undefined;
      transfers?.disconnected();
      if (wasWelcomed) events.emit('disconnected', { code, reason: reason.toString() });
      if (stopping || asleep) return;
      if (code === CLOSE_HOST_REFUSED) {
        log.error({ reason: reason.toString() }, 'the server refused this host (identity or capacity); the agent stops');
        events.emit('rejected', { status: 0, code: reason.toString() || 'host.refused', message: refusal ?? 'the server refused this host' });
        void stop();
        return;
      }
      if (code === CLOSE_HOST_REMOVED) {
        log.error('the server removed this host; the agent stops');
        void stop();
        return;
      }
      serverIndex++;
      const min = o.minBackoffMs ?? 200;
      const max = o.maxBackoffMs ?? 10_000;
      const delay = Math.min(max, min * 2 ** Math.min(attempt++, 10)) * (0.75 + Math.random() * 0.5);
      log.info({ code, delayMs: Math.round(delay) }, 'disconnected; reconnecting');
      reconnectTimer = setTimeout(connect, delay);
    });
  }

  function handle(sock: WebSocket, m: ServerMessage): void {
    switch (m.type) {
      case 'welcome': {
        welcomed = true;
        if (m.credential) {
          credential = m.credential;
          if (credentialFile) writeCredential(credentialFile, m.credential);
        }
        log.info({ hostId: m.hostId, serverId: m.serverId }, 'the server accepted this host');
        // Phases and every unacknowledged output chunk go first (the server registered this host's jobs
        // before it said welcome, so it takes them), then start requests, then results: the server stores
        // output before it makes a job final.
        const queued = outbox;
        outbox = [];
        for (const q of queued) sock.send(encodeMessage(q));
        for (const c of output.pending()) sock.send(encodeMessage(c));
        const dropped = output.takeDropped();
        if (dropped > 0) log.warn({ dropped }, 'output chunks were dropped: memory for unacknowledged output was full and there is no spill directory');
        for (const q of supervisor.pendingStarts()) sock.send(encodeMessage(q));
        for (const q of supervisor.pendingCacheAsks()) sock.send(encodeMessage(q));
        for (const r of supervisor.unacked()) sock.send(encodeMessage({ type: 'job.done', result: r }));
        if (powerError) {
          sock.send(encodeMessage({ type: 'power.error', action: 'sleep', requestId: powerError.requestId, code: 'power.sleep_failed', message: powerError.message }));
          powerError = undefined;
        }
        events.emit('connected', { hostId: m.hostId, serverId: m.serverId });
        return;
      }
      case 'sleep':
        void goToSleep(sock, m.requestId);
        return;
      case 'wol':
        // The server relays a wake through this awake host (same broadcast network as the asleep one). A
        // packet that cannot be sent is only logged: the server retries the wake when the host stays away.
        sendMagicPacket(m.mac, m.broadcast, m.port).then(
          () => log.info({ mac: m.mac, broadcast: m.broadcast, port: m.port }, 'sent a Wake-on-LAN packet for a host on this network'),
          (e: unknown) => log.warn({ mac: m.mac, broadcast: m.broadcast, port: m.port, err: (e as Error).message }, 'could not send the Wake-on-LAN packet the server asked for'),
        );
        return;
      case 'launch':
        supervisor.launch(m.jobId, m.attempt, m.spec);
        return;
      case 'stop':
        supervisor.stop(m.jobId, m.attempt, m.reason);
        return;
      case 'done.ack':
        supervisor.ack(m.jobId, m.attempt);
        output.drop(m.jobId, m.attempt);
        return;
      case 'log.ack':
        output.ack(m.jobId, m.attempt, m.seq);
        return;
      case 'cache.answer':
        supervisor.cacheAnswer(m.jobId, m.attempt, { write: m.write, ...(m.reason ? { reason: m.reason } : {}), ...(m.ref ? { ref: m.ref } : {}), ...(m.commit ? { commit: m.commit } : {}) });
        break;
      case 'cache.send':
      case 'cache.incoming':
      case 'cache.fetch.failed':
      case 'cache.end':
      case 'cache.ack':
      case 'cache.abort':
        if (transfers) transfers.handle(m);
        else if (m.type === 'cache.send') sock.send(encodeMessage({ type: 'cache.abort', tv: m.tv, transferId: m.transferId, reason: 'this host does not serve caches' }));
        return;
      case 'start.ok':
        supervisor.startAnswer(m.jobId, m.attempt, true);
        return;
      case 'start.refused':
        supervisor.startAnswer(m.jobId, m.attempt, false, m.reason);
        return;
      case 'error':
        refusal = m.message;
        log.error({ code: m.code, msg: m.message }, 'the server reported a protocol error');
        events.emit('protocol-error', { code: m.code, message: m.message });
        return;
    }
  }

  /**
   * The server asked this host to sleep: drain (the server places nothing new here; running jobs finish and
   * their results are acknowledged), say so, close the connection, run the sleep command. When it returns
   * (the host woke, or the command failed) wait `settleMs` and reconnect; a failure is reported after the
   * next welcome with the command's output.
   */
  let sleepingFor: number | undefined;
  async function goToSleep(sock: WebSocket, requestId: number): Promise<void> {
    const p = o.power;
    if (!p || p.driver === 'none' || !p.sleepCommand) {
      sock.send(encodeMessage({ type: 'power.error', action: 'sleep', requestId, code: 'power.no_driver', message: 'this host has no power driver configured, so it cannot sleep' }));
      return;
    }
    if (sleepingFor !== undefined) return;
    sleepingFor = requestId;
    try {
      log.info({ requestId }, 'asked to sleep: draining');
      while (!stopping && (supervisor.running().length > 0 || supervisor.unacked().length > 0)) await new Promise((r) => setTimeout(r, 100));
      if (stopping || ws !== sock || sock.readyState !== WebSocket.OPEN) return;
      asleep = true;
      sock.send(encodeMessage({ type: 'host.sleeping', requestId, power: powerReport! }));
      events.emit('sleeping', { requestId });
      const closed = once(sock, 'close').catch(() => undefined);
      sock.close(4002, 'host going to sleep');
      await Promise.race([closed, new Promise((r) => setTimeout(r, 2000).unref())]);
      sock.terminate();
      const timeoutMs = p.commandTimeoutMs ?? 10 * 60_000;
      log.info({ command: p.sleepCommand }, 'running the sleep command');
      const r = await runShellCommand(p.sleepCommand, { KILN_AGENT_PID: String(process.pid), KILN_HOST: cap?.name ?? '' }, timeoutMs);
      const failed = r.code !== 0 || r.timedOut;
      if (failed) {
        const message = commandFailure('the sleep command', r, timeoutMs);
        log.error({ msg: message }, 'could not put the host to sleep');
        powerError = { requestId, message };
        events.emit('awake', { requestId, error: message });
      } else {
        log.info('the sleep command returned: the host is awake again');
        if ((p.settleMs ?? 0) > 0) await new Promise((r) => setTimeout(r, p.settleMs));
        events.emit('awake', { requestId });
      }
    } finally {
      sleepingFor = undefined;
      if (asleep) {
        asleep = false;
        if (!stopping) connect();
      }
    }
  }

  async function stop(): Promise<void> {
    if (stopping) return;
    stopping = true;
    if (reconnectTimer) clearTimeout(reconnectTimer);
    if (silenceTimer) clearTimeout(silenceTimer);
    if (statusTimer) clearInterval(statusTimer);
    if (healthTimer) clearInterval(healthTimer);
    if (snapshotReport) clearTimeout(snapshotReport);
    await planner?.stop();
    transfers?.stop();
    await supervisor.stopAll('agent shutting down');
    const s = ws;
    if (s && s.readyState === WebSocket.OPEN) {
      // Give the final results a moment to leave; the server reconciles anything that does not.
      const closed = once(s, 'close').catch(() => {});
      s.close(1001, 'agent shutting down');
      await Promise.race([closed, new Promise((r) => setTimeout(r, 1000).unref())]);
    }
    s?.terminate();
    ws = undefined;
    await reporting?.catch(() => undefined);
    output.close();
    await Promise.all(mirrors.map((m) => m.stop()));
  }

  return {
    events,
    async start() {
      const swept = await o.driver.sweep();
      if (swept.removed.length > 0) log.warn({ removed: swept.removed }, 'removed VMs a previous agent left behind');
      cap = await capacity();
      powerReport = hostPowerReport(o.power);
      if (o.credentialDir) {
        credentialFile = join(o.credentialDir, `${cap.name}.host-credential`);
        credential = readCredential(credentialFile);
      }
      log.info({ host: cap, power: powerReport }, 'agent starting');
      if (mirrors.length > 0) {
        for (const m of mirrors) await m.start();
        // Not fatal: a mirror is supervised and reported unhealthy until its upstream answers.
        await Promise.all(
          mirrors.map((m) =>
            m.waitHealthy(10_000).catch((e: unknown) => log.warn({ registry: m.registry, code: toKilnError(e).code, msg: toKilnError(e).message }, 'a registry mirror is not healthy yet')),
          ),
        );
        for (const m of mirrors) m.on('exit', () => void reportStatus());
        statusTimer = setInterval(() => void reportStatus(), o.statusIntervalMs ?? 15_000);
        healthTimer = setInterval(() => void watchHealth(), o.healthPollMs ?? 2000);
      } else if (planner) {
        statusTimer = setInterval(() => void reportStatus(), o.statusIntervalMs ?? 15_000);
      }
      connect();
    },
    stop,
    async connected(timeoutMs = 10_000) {
      const [c] = await once(events, 'connected', { signal: AbortSignal.timeout(timeoutMs) });
      return c;
    },
    isConnected: () => welcomed,
    capacity: () => cap,
  };
}


/** A private CA in addition to the system's roots (Node's `ca` option replaces them otherwise). */
function withSystemCas(ca: Buffer): (string | Buffer)[] {
  return [...tls.rootCertificates, ca];
}
