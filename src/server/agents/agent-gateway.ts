/**
 * The server's end of the agent protocol: authenticates the WebSocket upgrade with an agent token,
 * registers the host from `hello`, reconciles what the agent runs against what the store says, applies
 * phases, logs and results, and drops agents that break the protocol (their accepted jobs stay safe in
 * the store and are reconciled when they come back).
 */
import type { FastifyInstance } from 'fastify';
import type { WebSocket } from '@fastify/websocket';
import {
  PROTOCOL_VERSION,
  CLOSE_HOST_REFUSED,
  CLOSE_TOKEN_REVOKED,
  MAX_MESSAGE_BYTES,
  encodeMessage,
  makeAgentMessageDecoder,
  type AgentMessage,
  type AgentMessageOf,
  type JobResultMsg,
  type ServerMessage,
} from '../../core/agent-protocol.ts';
import { KilnError, isKilnError, toKilnError } from '../../core/errors.ts';
import { launchSpecOf } from '../../core/job.ts';
import { activeJobsOnHosts, getJob } from '../../store/jobs.ts';
import { storedLogSeq } from '../../store/logs.ts';
import { disconnectHost, hostStates, registerHost, setHostCaches, setHostMirror, touchHosts } from '../../store/hosts.ts';
import { markAsleep, recordPowerError } from '../../store/power.ts';
import { revokedTokenIds } from '../../store/tokens.ts';
import type { ServerContext } from '../context.ts';
import { ActiveJobs, type HostLink, type HostRegistry } from './host-registry.ts';
import type { LogWriter } from './log-writer.ts';
import type { PhaseWriter } from './phase-writer.ts';
import type { ResultWriter } from './result-writer.ts';
import type { JobCommands } from '../jobs/job-commands.ts';
import type { Scheduler } from '../scheduler/scheduler.ts';
import { errorBody } from '../http/http-errors.ts';

export interface GatewayDeps {
  ctx: ServerContext;
  registry: HostRegistry;
  logs: LogWriter;
  phases: PhaseWriter;
  results: ResultWriter;
  /** The door for job changes (jobs lost on reconnect, phases, finished jobs). */
  jobs: JobCommands;
  /** The scheduler: kicked when a host joins, told when a job ended (capacity freed). */
  scheduler: Pick<Scheduler, 'kick' | 'capacityFreed'>;
  /** Host power (src/server/power): connects answer wakes; drained agents go to sleep. */
  power?: {
    connected(hostId: number, woke: { latencyMs: number; jobs: number } | undefined): void;
  };
  /**
   * Whether a finished job whose cache write is 'ask' (a GitHub runner VM) may commit its cache
   * (docs/caches.md). Unset: never.
   */
  cacheTrust?: (jobId: number) => Promise<{ write: boolean; reason?: string; ref?: string; commit?: string }>;
}

export interface AgentGateway {
  /** Closes this replica's connections that authenticated with a (now revoked) token. */
  closeToken(tokenId: number): void;
  /** Sends `stop` for a job if its host is connected here. */
  stop(hostId: number, jobId: number, attempt: number, reason: string): boolean;
  close(): Promise<void>;
}

export function attachAgentGateway(app: FastifyInstance, deps: GatewayDeps): AgentGateway {
  const { ctx, registry } = deps;
  const sockets = new Set<WebSocket>();
  /** Each connection's last work (marking its host offline), done once its socket has closed. */
  const finished = new Map<WebSocket, Promise<void>>();

  /** The agent token each connection authenticated with (revoking it closes the connection). */
  const tokenOf = new WeakMap<object, number>();
  const socketToken = new Map<WebSocket, number>();
  const closeRevoked = (revoked: Iterable<number>) => {
    const gone = new Set(revoked);
    for (const [s, id] of socketToken) {
      if (!gone.has(id)) continue;
      ctx.log.warn({ tokenId: id }, 'agent token revoked; closing its connection');
      s.close(CLOSE_TOKEN_REVOKED, 'token revoked');
    }
  };

  const heartbeat = setInterval(() => {
    const ids = [...registry.links.keys()];
    touchHosts(ctx.store.db, ctx.serverId, ids).catch((e: unknown) => ctx.log.warn({ err: e }, 'could not record host heartbeats'));
    // Tokens revoked through another replica: their connections here close within a heartbeat.
    const tokens = [...new Set(socketToken.values())];
    revokedTokenIds(ctx.store.db, tokens)
      .then(closeRevoked)
      .catch((e: unknown) => ctx.log.warn({ err: e }, 'could not check agent tokens'));
  }, ctx.options.heartbeatMs);

  app.get(
    '/v1/agent/connect',
    {
      websocket: true,
      preValidation: async (req, reply) => {
        try {
          tokenOf.set(req, (await ctx.auth.authenticate(req.headers.authorization, 'agent')).id);
        } catch (e) {
          const { status, body } = errorBody(e);
          ctx.events.emit('agent.rejected', { code: body.error.code, message: body.error.message });
          return reply.code(status).send(body);
        }
      },
    },
    (socket, req) => {
      sockets.add(socket);
      const tokenId = tokenOf.get(req) ?? 0;
      socketToken.set(socket, tokenId);
      socket.on('close', () => {
        sockets.delete(socket);
        socketToken.delete(socket);
      });
      handleConnection(socket);
    },
  );

  function handleConnection(socket: WebSocket): void {
    const decoder = makeAgentMessageDecoder();
    let link: HostLink | undefined;
    let queue: Promise<void> = Promise.resolve();
    let alive = true;
    let closed = false;
    let helloSeen = false;
    /** The host went to sleep on this connection: its close leaves it asleep, not offline. */
    let wentToSleep = false;
    /** When this connection's hello was stored (a newer connection of the same host is never marked offline by this one's close). */
    let connectedAt: string | null = null;
    const log = () => (link ? ctx.log.child({ hostId: link.hostId, host: link.name }) : ctx.log);

    // Messages sent to one agent in the same synchronous run (a scheduling pass launching several jobs on
    // it) leave in one write: the TCP socket under ws is corked until the next tick. (ws keeps that socket
    // in `_socket`; without it, each message is written on its own.)
    const tcp = (socket as unknown as { _socket?: { cork?: () => void; uncork?: () => void } })._socket;
    let corked = false;
    const send = (m: ServerMessage) => {
      if (socket.readyState !== socket.OPEN) return;
      if (!corked && tcp?.cork && tcp.uncork) {
        corked = true;
        tcp.cork();
        process.nextTick(() => {
          corked = false;
          tcp.uncork!();
        });
      }
      socket.send(encodeMessage(m));
    };
    const reject = (e: unknown) => {
      const err = toKilnError(e);
      ctx.metrics.agentProtocolErrors.inc({ code: err.code });
      log().warn({ code: err.code, msg: err.message }, 'agent broke the protocol; disconnecting it');
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
        log().warn('agent missed its heartbeat; dropping the connection');
        socket.terminate();
        return;
      }
      alive = false;
      socket.ping();
    }, ctx.options.heartbeatMs);
    socket.on('pong', () => (alive = true));

    socket.on('message', (data, isBinary) => {
      alive = true;
      if (closed) return;
      let msg: AgentMessage;
      try {
        if (isBinary) throw new KilnError('protocol.binary', 'agent messages are JSON text frames');
        msg = decoder.decode(data as Buffer);
        if (!helloSeen && msg.type !== 'hello') throw new KilnError('protocol.no_hello', `the first message must be hello, not ${msg.type}`);
        if (helloSeen && msg.type === 'hello') throw new KilnError('protocol.repeated_hello', 'hello may be sent once per connection');
        if (msg.type === 'hello') helloSeen = true;
        if (msg.type === 'hello' && msg.protocol !== PROTOCOL_VERSION) {
          throw new KilnError('protocol.version', `agent speaks protocol ${msg.protocol}, the server ${PROTOCOL_VERSION}`, { hint: 'run the same kiln version on agents and servers' });
        }
      } catch (e) {
        closed = true;
        reject(e);
        return;
      }
      // Logs go straight to the writer's buffer (in order), and are acknowledged once stored; everything
      // else is processed in arrival order.
      if (msg.type === 'job.log' && link) {
        if (!link.active.has(msg.jobId)) return; // not this host's (any more): its result settles it
        const { jobId, attempt } = msg;
        deps.logs.push({ jobId, attempt, seq: msg.seq, stream: msg.stream, data: Buffer.from(msg.data, 'base64') }).then(
          (seq) => {
            if (seq !== undefined && seq >= 0) ackLog(jobId, attempt, seq);
          },
          () => {
            // Not stored: the agent still holds it and resends everything unacknowledged when it reconnects.
            if (!closed) socket.close(1011, 'could not store job output');
          },
        );
        return;
      }
      if (msg.type === 'job.start' && link) {
        start(link, msg.jobId, msg.attempt);
        return;
      }
      const m = msg;
      queue = queue
        .then(() => handle(m))
        .catch((e: unknown) => {
          log().error({ err: e }, 'could not handle an agent message; the agent will reconcile when it reconnects');
          socket.close(1011, 'server error');
        });
    });

    let ended!: () => void;
    finished.set(socket, new Promise<void>((r) => (ended = r)));
    socket.on('close', () => {
      closed = true;
      clearInterval(ping);
      queue = queue.then(async () => {
        if (!link) return;
        const l = link;
        if (!registry.remove(l)) return;
        ctx.metrics.hostsConnected.set(registry.links.size);
        log().info('agent disconnected');
        await disconnectHost(ctx.store.db, l.hostId, ctx.serverId, connectedAt).catch((e: unknown) => log().warn({ err: e }, 'could not mark host offline'));
        ctx.events.emit('host.disconnected', { hostId: l.hostId, name: l.name });
        ctx.events.emit('host.state', { hostId: l.hostId, name: l.name, state: wentToSleep ? 'asleep' : 'offline' });
      });
      void queue.catch(() => undefined).then(() => {
        finished.delete(socket);
        ended();
      });
    });

    async function handle(msg: AgentMessage): Promise<void> {
      switch (msg.type) {
        case 'hello':
          return hello(msg);
        case 'job.phase':
          return phase(msg);
        case 'job.done':
          return done(msg.result);
        case 'job.log':
        case 'job.start':
          return;
        case 'host.status':
          return hostStatus(msg);
        case 'host.sleeping':
          return sleeping(msg);
        case 'power.error':
          return powerError(msg);
        case 'cache.ask':
          return cacheAsk(msg);
      }
    }

    /** Answers cache.ask off the message queue (it may call GitHub's API); the default is no. */
    function cacheAsk(msg: AgentMessageOf<'cache.ask'>): void {
      if (!link) return;
      const ask = link.active.get(msg.jobId)?.attempt === msg.attempt ? deps.cacheTrust : undefined;
      void (async () => {
        let a: { write: boolean; reason?: string; ref?: string; commit?: string };
        try {
          a = ask ? await ask(msg.jobId) : { write: false, reason: 'this server decides no cache writes for such jobs' };
        } catch (e) {
          a = { write: false, reason: `the trust check failed: ${(e as Error).message}`.slice(0, 500) };
        }
        if (!closed) send({ type: 'cache.answer', jobId: msg.jobId, attempt: msg.attempt, write: a.write, ...(a.reason ? { reason: a.reason.slice(0, 500) } : {}), ...(a.ref ? { ref: a.ref } : {}), ...(a.commit ? { commit: a.commit } : {}) });
      })();
    }

    async function hello(msg: AgentMessageOf<'hello'>): Promise<void> {
      let registered: Awaited<ReturnType<typeof registerHost>>;
      try {
        registered = await registerHost(ctx.store.db, msg.host, ctx.serverId, msg.mirror, {
          ...(msg.credential ? { credential: msg.credential } : {}),
          policy: ctx.options.hostPolicy,
        }, msg.power);
      } catch (e) {
        if (!isKilnError(e) || !e.code.startsWith('host.')) throw e;
        // Another machine using this host's name, or a capacity claim past what it registered with: refused,
        // and the agent is told not to retry (an operator has to act).
        closed = true;
        ctx.metrics.agentProtocolErrors.inc({ code: e.code });
        ctx.log.warn({ code: e.code, msg: e.message, host: msg.host.name }, 'host refused');
        ctx.events.emit('agent.rejected', { code: e.code, message: e.message });
        send({ type: 'error', code: e.code, message: `${e.message}${e.hint ? ` (${e.hint})` : ''}`.slice(0, 1000) });
        socket.close(CLOSE_HOST_REFUSED, e.code.slice(0, 100));
        return;
      }
      const host = registered.host;
      if (msg.caches) await setHostCaches(ctx.store.db, host.id, ctx.serverId, msg.caches);
      connectedAt = host.connectedAt;
      const hlog = ctx.log.child({ hostId: host.id, host: host.name });
      const l: HostLink = {
        hostId: host.id,
        name: host.name,
        arch: host.arch,
        labels: host.labels,
        capacity: host.capacity,
        active: new ActiveJobs(),
        stopping: new Set(),
        schedulable: host.state === 'online' && !host.cordoned,
        ready: false,
        ...(msg.caches ? { caches: new Set(msg.caches.map((c) => c.key)) } : {}),
        send,
        close: (code, reason) => socket.close(code, reason),
      };
      link = l;
      // A stale connection of the same host on this replica is retired before reconciling, so nothing is
      // launched through it meanwhile.
      const stale = registry.get(host.id);
      if (stale && stale !== l) {
        registry.remove(stale);
        stale.ready = false;
        stale.close(4000, 'replaced by a newer connection from the same host');
      }
      // `welcome` goes out only after the host's jobs are registered below: the agent resends the output it
      // holds right after it, and output of a job not registered yet would be dropped.
      // 1. Results the agent finished while disconnected.
      for (const r of msg.finished) await applyResult(l, r);
      // 2. What the store says runs there versus what the agent runs.
      const running = new Map(msg.running.map((r) => [r.jobId, r]));
      const kept = new Set<number>();
      for (const j of await activeJobsOnHosts(ctx.store.db, [host.id])) {
        const a = running.get(j.id);
        if (!a || a.attempt !== j.attempt) {
          const lost = await deps.jobs.lose(j.id, j.attempt, 'the host came back without it');
          if (lost) hlog.warn({ jobId: j.id, requeued: lost.requeued }, 'job lost on its host');
          continue;
        }
        kept.add(j.id);
        l.active.set(j.id, { attempt: j.attempt, cpus: j.cpus, memoryBytes: j.memoryBytes, diskBytes: j.diskBytes });
        if (a.phase === 'running' && j.state !== 'running') await applyPhase(l, j.id, j.attempt, 'running');
        else if (a.phase === 'booting' && j.state === 'placed') await applyPhase(l, j.id, j.attempt, 'booting');
        if (j.cancelRequested) {
          l.stopping.add(j.id);
          send({ type: 'stop', jobId: j.id, attempt: j.attempt, reason: 'cancelled' });
        }
      }
      // 3. VMs the server does not know about are killed.
      for (const r of msg.running) {
        if (kept.has(r.jobId)) continue;
        hlog.warn({ jobId: r.jobId, attempt: r.attempt }, 'agent runs a job the server does not place there; stopping it');
        send({ type: 'stop', jobId: r.jobId, attempt: r.attempt, reason: 'unknown to the server' });
      }
      send({ type: 'welcome', protocol: PROTOCOL_VERSION, hostId: host.id, hostName: host.name, serverId: ctx.serverId, ...(registered.issued ? { credential: registered.issued } : {}) });
      const old = registry.add(l);
      if (old) old.close(4000, 'replaced by a newer connection from the same host');
      l.ready = true;
      // A scheduling pass that was under way during the reconcile may have placed jobs here whose launch
      // had nowhere to go: launch them now (agents ignore a repeated launch).
      for (const j of await activeJobsOnHosts(ctx.store.db, [host.id])) {
        if (l.active.has(j.id)) continue;
        const job = await getJob(ctx.store.db, j.id);
        if (!job || job.state !== 'placed' || job.attempt !== j.attempt) continue;
        l.active.set(j.id, { attempt: j.attempt, cpus: j.cpus, memoryBytes: j.memoryBytes, diskBytes: j.diskBytes });
        send({ type: 'launch', jobId: j.id, attempt: j.attempt, spec: launchSpecOf(job) });
      }
      ctx.metrics.hostsConnected.set(registry.links.size);
      hlog.info({ arch: host.arch, cpus: host.capacity.cpus, kept: kept.size }, 'agent connected');
      deps.power?.connected(host.id, host.woke);
      if (host.woke) hlog.info({ latencyMs: Math.round(host.woke.latencyMs), reason: host.woke.reason }, 'the host woke');
      ctx.events.emit('host.connected', { hostId: host.id, name: host.name });
      ctx.events.emit('host.state', { hostId: host.id, name: host.name, state: host.state });
      deps.scheduler.kick();
    }

    /** The agent drained for a sleep request and is about to run its sleep command. */
    async function sleeping(msg: AgentMessageOf<'host.sleeping'>): Promise<void> {
      if (!link) return;
      const l = link;
      l.schedulable = false;
      if (!(await markAsleep(ctx.store.db, l.hostId, ctx.serverId, msg.requestId, msg.power))) return;
      wentToSleep = true;
      log().info('the host is going to sleep');
      ctx.events.emit('power.asleep', { hostId: l.hostId, name: l.name });
      ctx.events.emit('host.state', { hostId: l.hostId, name: l.name, state: 'asleep' });
    }

    async function powerError(msg: AgentMessageOf<'power.error'>): Promise<void> {
      if (!link) return;
      const l = link;
      await recordPowerError(ctx.store.db, l.hostId, msg.action, msg.message);
      log().error({ code: msg.code, msg: msg.message }, 'the host could not go to sleep');
      ctx.events.emit('power.error', { hostId: l.hostId, name: l.name, action: msg.action, message: msg.message });
      const [h] = await hostStates(ctx.store.db, [l.hostId]);
      if (h && h.state === 'online' && !h.cordoned && h.serverId === ctx.serverId) {
        l.schedulable = true;
        deps.scheduler.kick();
      }
    }

    async function hostStatus(msg: AgentMessageOf<'host.status'>): Promise<void> {
      if (!link) return;
      const l = link;
      if (msg.caches) {
        l.caches = new Set(msg.caches.map((c) => c.key));
        await setHostCaches(ctx.store.db, l.hostId, ctx.serverId, msg.caches);
      }
      if (!(await setHostMirror(ctx.store.db, l.hostId, ctx.serverId, msg.mirror ?? null))) return;
      ctx.events.emit('host.status', { hostId: l.hostId, name: l.name, mirror: msg.mirror ?? null });
    }

    async function phase(msg: AgentMessageOf<'job.phase'>): Promise<void> {
      if (!link || link.active.get(msg.jobId)?.attempt !== msg.attempt) return;
      deps.phases.push({ jobId: msg.jobId, attempt: msg.attempt, hostId: link.hostId, phase: msg.phase });
    }

    async function done(r: JobResultMsg): Promise<void> {
      if (!link) return;
      if (!(await outputComplete(link, r))) {
        log().warn({ jobId: r.jobId, attempt: r.attempt, logChunks: r.logChunks }, 'a result arrived before all of its output was stored; asking the agent to resend');
        closed = true;
        socket.close(1011, 'job output incomplete; resend');
        return;
      }
      await applyResult(link, r);
      deps.logs.forget(r.jobId, r.attempt);
    }

    /** Grants or refuses a start lease once the job's running state is stored (see phase-writer.ts). */
    function start(l: HostLink, jobId: number, attempt: number): void {
      if (l.active.get(jobId)?.attempt !== attempt) {
        send({ type: 'start.refused', jobId, attempt, reason: 'the job is not placed on this host (any more)' });
        return;
      }
      deps.phases.start({ jobId, attempt, hostId: l.hostId, phase: 'running' }).then(
        (ok) => send(ok ? { type: 'start.ok', jobId, attempt } : { type: 'start.refused', jobId, attempt, reason: 'the job is no longer placed on this host' }),
        (e: unknown) => {
          // Unknown whether it was stored: the agent asks again after it reconnects (a stored start is granted again).
          log().error({ err: e, jobId }, 'could not record a job start');
          if (!closed) socket.close(1011, 'could not record a job start');
        },
      );
    }
  }

  const applyPhase = (l: HostLink, jobId: number, attempt: number, phase: 'booting' | 'running') => deps.jobs.applyPhase(l.hostId, jobId, attempt, phase);

  /**
   * Whether every output chunk the agent sent for a result's attempt is stored (or settled): a job is never
   * made final with holes in its output. Only for jobs active on this link (others: already settled).
   */
  async function outputComplete(l: HostLink, r: JobResultMsg): Promise<boolean> {
    if (!r.logChunks || l.active.get(r.jobId)?.attempt !== r.attempt) return true;
    await deps.logs.flush();
    if (deps.logs.settled(r.jobId, r.attempt) >= r.logChunks - 1) return true;
    const stored = await storedLogSeq(ctx.store.db, r.jobId, r.attempt);
    return stored.truncated || stored.seq >= r.logChunks - 1;
  }

  async function applyResult(l: HostLink, r: JobResultMsg): Promise<void> {
    // Everything the agent sent before the result is stored before the job is final, so a follower that
    // sees the final state has all the output.
    const res = await deps.results.apply(l.hostId, r);
    const held = l.active.get(r.jobId);
    if (held && held.attempt === r.attempt) {
      l.active.delete(r.jobId);
      l.stopping.delete(r.jobId);
    }
    l.send({ type: 'done.ack', jobId: r.jobId, attempt: r.attempt });
    if (res) deps.jobs.finished(l.hostId, res);
    if (res && r.cache) countCache(r.cache);
    deps.scheduler.capacityFreed();
  }

  /** A job's cache, once per applied result (a resent result changes nothing and is not counted). */
  function countCache(c: NonNullable<JobResultMsg['cache']>): void {
    (c.hit ? ctx.metrics.cacheHits : ctx.metrics.cacheMisses).inc();
    if (c.committed) {
      ctx.metrics.cacheCommits.inc();
      ctx.metrics.cacheCommittedBytes.inc(c.committed.bytes);
      ctx.metrics.cacheCommitSeconds.observe(c.committed.seconds);
    }
    if (c.evicted) ctx.metrics.cacheEvictions.inc(c.evicted);
  }

  function stop(hostId: number, jobId: number, attempt: number, reason: string): boolean {
    const l = registry.get(hostId);
    if (!l?.ready) return false;
    l.stopping.add(jobId);
    l.send({ type: 'stop', jobId, attempt, reason });
    return true;
  }
  // A cancel through this replica (any caller of the job door) stops the VM at once when its host is here.
  const offStop = ctx.events.on('job.stop', (e) => void stop(e.hostId, e.jobId, e.attempt, e.reason));

  return {
    closeToken: (tokenId) => closeRevoked([tokenId]),
    stop,
    async close() {
      offStop();
      clearInterval(heartbeat);
      for (const s of sockets) s.close(1001, 'server shutting down');
      // Hosts are marked offline as their sockets close, before the caller closes the store (they logged
      // "could not mark host offline" by the thousand otherwise). An agent that does not answer the close
      // within 2 s is cut off, and shutdown waits at most 5 s in all.
      const cutOff = setTimeout(() => {
        for (const s of sockets) s.terminate();
      }, 2000);
      let giveUp: NodeJS.Timeout | undefined;
      await Promise.race([Promise.all(finished.values()), new Promise<void>((r) => (giveUp = setTimeout(r, 5000)))]);
      clearTimeout(cutOff);
      clearTimeout(giveUp);
    },
  };
}

export const AGENT_MAX_PAYLOAD = MAX_MESSAGE_BYTES + 1024;
