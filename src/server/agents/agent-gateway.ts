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
  MAX_MESSAGE_BYTES,
  encodeMessage,
  makeAgentMessageDecoder,
  type AgentMessage,
  type AgentMessageOf,
  type JobResultMsg,
  type ServerMessage,
} from '../../core/agent-protocol.ts';
import { KilnError, toKilnError } from '../../core/errors.ts';
import { launchSpecOf } from '../../core/job.ts';
import { activeJobsOnHosts, getJob, loseJob, transitionJob } from '../../store/jobs.ts';
import { connectHost, disconnectHost, setHostMirror, touchHosts } from '../../store/hosts.ts';
import type { ServerContext } from '../context.ts';
import { ActiveJobs, type HostLink, type HostRegistry } from './host-registry.ts';
import type { LogWriter } from './log-writer.ts';
import type { PhaseWriter } from './phase-writer.ts';
import type { ResultWriter } from './result-writer.ts';
import { errorBody } from '../http/http-errors.ts';

export interface GatewayDeps {
  ctx: ServerContext;
  registry: HostRegistry;
  logs: LogWriter;
  phases: PhaseWriter;
  results: ResultWriter;
  /** Something changed that may let the scheduler place more (capacity freed, host joined). */
  kick(): void;
  /** A job ended on a host: a pass is worth it only if work was left waiting. */
  capacityFreed(): void;
}

export interface AgentGateway {
  /** Sends `stop` for a job if its host is connected here. */
  stop(hostId: number, jobId: number, attempt: number, reason: string): boolean;
  close(): Promise<void>;
}

export function attachAgentGateway(app: FastifyInstance, deps: GatewayDeps): AgentGateway {
  const { ctx, registry } = deps;
  const sockets = new Set<WebSocket>();
  /** Each connection's last work (marking its host offline), done once its socket has closed. */
  const finished = new Map<WebSocket, Promise<void>>();

  const heartbeat = setInterval(() => {
    const ids = [...registry.links.keys()];
    touchHosts(ctx.store.db, ctx.serverId, ids).catch((e: unknown) => ctx.log.warn({ err: e }, 'could not record host heartbeats'));
  }, ctx.options.heartbeatMs);

  app.get(
    '/v1/agent/connect',
    {
      websocket: true,
      preValidation: async (req, reply) => {
        try {
          await ctx.auth.authenticate(req.headers.authorization, 'agent');
        } catch (e) {
          const { status, body } = errorBody(e);
          ctx.events.emit('agent.rejected', { code: body.error.code, message: body.error.message });
          return reply.code(status).send(body);
        }
      },
    },
    (socket) => {
      sockets.add(socket);
      socket.on('close', () => sockets.delete(socket));
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
      // Logs go straight to the writer's buffer (in order); everything else is processed in arrival order.
      if (msg.type === 'job.log' && link) {
        if (!link.active.has(msg.jobId)) return;
        deps.logs.push({ jobId: msg.jobId, attempt: msg.attempt, seq: msg.seq, stream: msg.stream, data: Buffer.from(msg.data, 'base64') });
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
        await disconnectHost(ctx.store.db, l.hostId, ctx.serverId).catch((e: unknown) => log().warn({ err: e }, 'could not mark host offline'));
        ctx.events.emit('host.disconnected', { hostId: l.hostId, name: l.name });
        ctx.events.emit('host.state', { hostId: l.hostId, name: l.name, state: 'offline' });
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
          return;
        case 'host.status':
          return hostStatus(msg);
      }
    }

    async function hello(msg: AgentMessageOf<'hello'>): Promise<void> {
      const host = await connectHost(ctx.store.db, msg.host, ctx.serverId, msg.mirror);
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
      send({ type: 'welcome', protocol: PROTOCOL_VERSION, hostId: host.id, hostName: host.name, serverId: ctx.serverId });
      // 1. Results the agent finished while disconnected.
      for (const r of msg.finished) await applyResult(l, r);
      // 2. What the store says runs there versus what the agent runs.
      const running = new Map(msg.running.map((r) => [r.jobId, r]));
      const kept = new Set<number>();
      for (const j of await activeJobsOnHosts(ctx.store.db, [host.id])) {
        const a = running.get(j.id);
        if (!a || a.attempt !== j.attempt) {
          const lost = await loseJob(ctx.store.db, j.id, j.attempt, 'the host came back without it');
          if (lost) {
            hlog.warn({ jobId: j.id, requeued: lost.requeued }, 'job lost on its host');
            ctx.events.emit('job.state', { job: lost.job, from: j.state, to: lost.job.state });
          }
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
      ctx.events.emit('host.connected', { hostId: host.id, name: host.name });
      ctx.events.emit('host.state', { hostId: host.id, name: host.name, state: host.state });
      deps.kick();
    }

    async function hostStatus(msg: AgentMessageOf<'host.status'>): Promise<void> {
      if (!link) return;
      const l = link;
      if (!(await setHostMirror(ctx.store.db, l.hostId, ctx.serverId, msg.mirror ?? null))) return;
      ctx.events.emit('host.status', { hostId: l.hostId, name: l.name, mirror: msg.mirror ?? null });
    }

    async function phase(msg: AgentMessageOf<'job.phase'>): Promise<void> {
      if (!link || link.active.get(msg.jobId)?.attempt !== msg.attempt) return;
      deps.phases.push({ jobId: msg.jobId, attempt: msg.attempt, hostId: link.hostId, phase: msg.phase });
    }

    async function done(r: JobResultMsg): Promise<void> {
      if (!link) return;
      await applyResult(link, r);
    }
  }

  async function applyPhase(l: HostLink, jobId: number, attempt: number, phase: 'booting' | 'running'): Promise<void> {
    const res = await transitionJob(ctx.store.db, jobId, attempt, (job) => {
      if (job.hostId !== l.hostId) return undefined;
      if (phase === 'booting') return job.state === 'placed' ? { event: { type: 'boot' } } : undefined;
      return { event: { type: 'start' } };
    });
    if (res) ctx.events.emit('job.state', { job: res.job, from: res.from, to: res.job.state });
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
    if (res) {
      ctx.metrics.finished.inc({ state: res.job.state });
      ctx.log.child({ jobId: r.jobId, hostId: l.hostId }).info({ state: res.job.state, exitCode: res.job.exitCode }, 'job finished');
      ctx.events.emit('job.state', { job: res.job, from: res.from, to: res.job.state });
    }
    deps.capacityFreed();
  }

  return {
    stop(hostId, jobId, attempt, reason) {
      const l = registry.get(hostId);
      if (!l?.ready) return false;
      l.stopping.add(jobId);
      l.send({ type: 'stop', jobId, attempt, reason });
      return true;
    },
    async close() {
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
