/**
 * One agent's WebSocket on the server: frames decoded and checked (hello first, once, same protocol; JSON text
 * frames, and binary frames only as cache chunk frames from a host whose hello was accepted),
 * messages handled in arrival order (output straight to the log writer and acknowledged once stored, start
 * requests answered at once), pings, and on close the host marked offline (or left asleep). What each message
 * does lives in host-session.ts (hello, host status and power) and job-reports.ts (phases, starts, results).
 */
import type { WebSocket } from '@fastify/websocket';
import type { Logger } from 'pino';
import { PROTOCOL_VERSION, decodeCacheChunkFrame, encodeMessage, makeAgentMessageDecoder, type AgentMessage, type CacheChunkFrame, type ServerMessage } from '../../core/agent-protocol.ts';
import { KilnError, toKilnError } from '../../core/errors.ts';
import { disconnectHost } from '../../store/hosts.ts';
import type { GatewayDeps } from './agent-gateway.ts';
import type { HostLink } from './host-registry.ts';
import { hello, hostStatus, powerError, sleeping } from './host-session.ts';
import { cacheAsk, done, phase, start } from './job-reports.ts';

/** One connection's state, shared by the message handlers. */
export interface Connection {
  /** The host, once its hello was accepted. */
  link: HostLink | undefined;
  /** No more messages are handled (the socket closed or is closing). */
  closed: boolean;
  /** The host went to sleep on this connection: its close leaves it asleep, not offline. */
  wentToSleep: boolean;
  /** When this connection's hello was stored (a newer connection of the same host is never marked offline by this one's close). */
  connectedAt: string | null;
  send(m: ServerMessage): void;
  /** Sends one binary frame (a relayed cache chunk frame), corked with the messages of the same turn like `send`. */
  sendBinary(frame: Buffer): void;
  /** Bytes queued on the socket, not yet written to the kernel (ws's bufferedAmount). */
  bufferedBytes(): number;
  close(code: number, reason: string): void;
  log(): Logger;
}

/** Serves one agent connection; `ended` resolves once its last work (marking the host offline) is done. */
export function handleConnection(deps: GatewayDeps, socket: WebSocket): { ended: Promise<void> } {
  const { ctx, registry } = deps;
  const decoder = makeAgentMessageDecoder();
  let queue: Promise<void> = Promise.resolve();
  let alive = true;
  let helloSeen = false;

  // Messages sent to one agent in the same synchronous run (a scheduling pass launching several jobs on
  // it) leave in one write: the TCP socket under ws is corked until the next tick. (ws keeps that socket
  // in `_socket`; without it, each message is written on its own.)
  const tcp = (socket as unknown as { _socket?: { cork?: () => void; uncork?: () => void } })._socket;
  let corked = false;
  const cork = () => {
    if (!corked && tcp?.cork && tcp.uncork) {
      corked = true;
      tcp.cork();
      process.nextTick(() => {
        corked = false;
        tcp.uncork!();
      });
    }
  };
  const send = (m: ServerMessage) => {
    if (socket.readyState !== socket.OPEN) return;
    cork();
    socket.send(encodeMessage(m));
  };
  const sendBinary = (frame: Buffer) => {
    if (socket.readyState !== socket.OPEN) return;
    cork();
    socket.send(frame, { binary: true });
  };
  const c: Connection = {
    link: undefined,
    closed: false,
    wentToSleep: false,
    connectedAt: null,
    send,
    sendBinary,
    bufferedBytes: () => socket.bufferedAmount,
    close: (code, reason) => socket.close(code, reason),
    log: () => (c.link ? ctx.log.child({ hostId: c.link.hostId, host: c.link.name }) : ctx.log),
  };
  const reject = (e: unknown) => {
    const err = toKilnError(e);
    ctx.metrics.agentProtocolErrors.inc({ code: err.code });
    c.log().warn({ code: err.code, msg: err.message }, 'agent broke the protocol; disconnecting it');
    send({ type: 'error', code: err.code, message: err.message });
    socket.close(1008, err.code.slice(0, 100));
  };

  // Output acknowledgements, one per attempt per turn of the event loop (the highest seq wins).
  const acks = new Map<number, { attempt: number; seq: number }>();
  const ackLog = (jobId: number, attempt: number, seq: number) => {
    const prev = acks.get(jobId);
    if (acks.size === 0) setImmediate(sendAcks);
    if (!prev || prev.attempt !== attempt || prev.seq < seq) acks.set(jobId, { attempt, seq });
  };
  const sendAcks = () => {
    for (const [jobId, a] of acks) send({ type: 'log.ack', jobId, attempt: a.attempt, seq: a.seq });
    acks.clear();
  };

  const ping = setInterval(() => {
    if (!alive) {
      c.log().warn('agent missed its heartbeat; dropping the connection');
      socket.terminate();
      return;
    }
    alive = false;
    socket.ping();
  }, ctx.options.heartbeatMs);
  socket.on('pong', () => (alive = true));

  socket.on('message', (data, isBinary) => {
    alive = true;
    if (c.closed) return;
    if (isBinary) {
      // The one binary frame: a cache chunk from a host whose hello was accepted, relayed at once as it came.
      let chunk: CacheChunkFrame;
      const link = c.link;
      try {
        if (!link) throw new KilnError('protocol.binary', 'agent messages are JSON text frames (binary frames are only cache chunks, after an accepted hello)');
        chunk = decodeCacheChunkFrame(data as Buffer);
      } catch (e) {
        c.closed = true;
        reject(e);
        return;
      }
      deps.relay?.chunk(c, link, chunk, data as Buffer);
      return;
    }
    let msg: AgentMessage;
    try {
      msg = decoder.decode(data as Buffer);
      if (!helloSeen && msg.type !== 'hello') throw new KilnError('protocol.no_hello', `the first message must be hello, not ${msg.type}`);
      if (helloSeen && msg.type === 'hello') throw new KilnError('protocol.repeated_hello', 'hello may be sent once per connection');
      if (msg.type === 'hello') helloSeen = true;
      if (msg.type === 'hello' && msg.protocol !== PROTOCOL_VERSION) {
        throw new KilnError('protocol.version', `agent speaks protocol ${msg.protocol}, the server ${PROTOCOL_VERSION}`, { hint: 'run the same kiln version on agents and servers' });
      }
    } catch (e) {
      c.closed = true;
      reject(e);
      return;
    }
    // Logs go straight to the writer's buffer (in order), and are acknowledged once stored; everything
    // else is processed in arrival order.
    const link = c.link;
    if (msg.type === 'job.log' && link) {
      if (!link.active.has(msg.jobId)) return; // not this host's (any more): its result settles it
      const { jobId, attempt } = msg;
      deps.logs.push({ jobId, attempt, seq: msg.seq, stream: msg.stream, data: Buffer.from(msg.data, 'base64') }).then(
        (seq) => {
          if (seq !== undefined && seq >= 0) ackLog(jobId, attempt, seq);
        },
        () => {
          // Not stored: the agent still holds it and resends everything unacknowledged when it reconnects.
          if (!c.closed) socket.close(1011, 'could not store job output');
        },
      );
      return;
    }
    if (msg.type === 'job.start' && link) {
      start(deps, c, link, msg);
      return;
    }
    // Cache transfer traffic is relayed at once, outside the ordered queue (a chunk must not wait behind a
    // result being stored); the relay bounds it (cache-relay.ts).
    if (link && deps.relay && (msg.type === 'cache.ack' || msg.type === 'cache.offer' || msg.type === 'cache.end' || msg.type === 'cache.abort' || msg.type === 'cache.received')) {
      deps.relay.message(c, link, msg);
      return;
    }
    if (link && deps.relay && msg.type === 'cache.fetch') {
      const relay = deps.relay;
      relay.fetch(c, link, msg).catch((e: unknown) => {
        c.log().error({ err: e, jobId: msg.jobId }, 'could not start a cache fetch');
        c.send({ type: 'cache.fetch.failed', tv: msg.tv, fetchId: msg.fetchId, outcome: 'failed', reason: 'the server could not look the cache up' });
      });
      return;
    }
    const m = msg;
    queue = queue
      .then(() => handle(m))
      .catch((e: unknown) => {
        c.log().error({ err: e }, 'could not handle an agent message; the agent will reconcile when it reconnects');
        socket.close(1011, 'server error');
      });
  });

  let ended!: () => void;
  const whenEnded = new Promise<void>((r) => (ended = r));
  socket.on('close', () => {
    c.closed = true;
    clearInterval(ping);
    queue = queue.then(async () => {
      if (!c.link) return;
      const l = c.link;
      deps.relay?.closed(l);
      if (!registry.remove(l)) return;
      ctx.metrics.hostsConnected.set(registry.links.size);
      c.log().info('agent disconnected');
      await disconnectHost(ctx.store.db, l.hostId, ctx.serverId, c.connectedAt).catch((e: unknown) => c.log().warn({ err: e }, 'could not mark host offline'));
      ctx.events.emit('host.disconnected', { hostId: l.hostId, name: l.name });
      ctx.events.emit('host.state', { hostId: l.hostId, name: l.name, state: c.wentToSleep ? 'asleep' : 'offline' });
    });
    void queue.catch(() => undefined).then(() => ended());
  });

  async function handle(msg: AgentMessage): Promise<void> {
    switch (msg.type) {
      case 'hello':
        return hello(deps, c, msg);
      case 'job.phase':
        return phase(deps, c, msg);
      case 'job.done':
        return done(deps, c, msg.result);
      case 'job.log':
      case 'job.start':
        return;
      case 'host.status':
        return hostStatus(deps, c, msg);
      case 'host.sleeping':
        return sleeping(deps, c, msg);
      case 'power.error':
        return powerError(deps, c, msg);
      case 'cache.ask':
        return cacheAsk(deps, c, msg);
      case 'cache.fetch':
      case 'cache.ack':
      case 'cache.received':
      case 'cache.offer':
      case 'cache.end':
      case 'cache.abort':
        return; // relayed above (before hello they are ignored: the link is not known yet)
    }
  }

  return { ended: whenEnded };
}
