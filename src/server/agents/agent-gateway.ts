/**
 * The server's end of the agent protocol: the `/v1/agent/connect` endpoint (the WebSocket upgrade
 * authenticated with an agent token), host heartbeats, connections closed when their token is revoked,
 * `stop` sent to a connected host, and shutdown. Each connection is served by agent-connection.ts: it
 * registers the host from `hello` and reconciles what the agent runs against the store (host-session.ts),
 * applies phases, logs and results (job-reports.ts), and drops agents that break the protocol (their accepted
 * jobs stay safe in the store and are reconciled when they come back).
 */
import type { FastifyInstance } from 'fastify';
import type { WebSocket } from '@fastify/websocket';
import { CLOSE_TOKEN_REVOKED, MAX_MESSAGE_BYTES } from '../../core/agent-protocol.ts';
import { touchHosts } from '../../store/hosts.ts';
import { revokedTokenIds } from '../../store/tokens.ts';
import type { ServerContext } from '../context.ts';
import { handleConnection } from './agent-connection.ts';
import { makeCacheRelay, type CacheRelay } from './cache-relay.ts';
import type { HostRegistry } from './host-registry.ts';
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
  /** Host-to-host cache transfers (cache-relay.ts); made by attachAgentGateway when not given. */
  relay?: CacheRelay;
}

export interface AgentGateway {
  /** Closes this replica's connections that authenticated with a (now revoked) token. */
  closeToken(tokenId: number): void;
  /** Sends `stop` for a job if its host is connected here. */
  stop(hostId: number, jobId: number, attempt: number, reason: string): boolean;
  close(): Promise<void>;
}

export function attachAgentGateway(app: FastifyInstance, given: GatewayDeps): AgentGateway {
  const relay = given.relay ?? makeCacheRelay(given.ctx, given.registry);
  const deps: GatewayDeps = { ...given, relay };
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
      finished.set(
        socket,
        handleConnection(deps, socket).ended.then(() => void finished.delete(socket)),
      );
    },
  );

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
      relay.close();
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
