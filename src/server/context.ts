/** What the parts of one server instance share; built once in server.ts and passed down explicitly. */
import type { Logger } from 'pino';
import type { Store } from '../store/store.ts';
import { DEFAULT_HOST_POLICY, type HostPolicy } from '../store/hosts.ts';
import type { ServerEventBus } from './events.ts';
import type { Metrics } from './metrics.ts';
import type { Authenticator } from './http/auth.ts';
import type { BodyIntake } from './http/body-intake.ts';

export interface ServerOptions {
  /** Longest a job's stored log may grow, in bytes; the rest is dropped with a note. */
  logLimitBytes: number;
  /** How long a disconnected host keeps its jobs before they are marked lost. */
  hostLostAfterMs: number;
  /** How often a replica polls the database for work other replicas created. */
  pollMs: number;
  /** Grace after a job's own timeout before the server times it out itself (the agent normally does). */
  timeoutGraceMs: number;
  /** Jobs claimed per scheduling pass. */
  batchSize: number;
  /** WebSocket ping interval; a host that misses two is dropped. */
  heartbeatMs: number;
  /** Test-only: start requests are never recorded nor answered (see KILN_TEST_HOLD_STARTS). */
  testHoldStarts?: boolean;
  /** The most a host may claim (docs/security.md, "Host identity"). */
  hostPolicy: HostPolicy;
  /** Host-to-host cache transfers (docs/caches.md): chunks in flight per transfer, a stall bound, how many at once. */
  cacheRelay?: { windowChunks?: number; stallMs?: number; maxTransfers?: number; maxBufferedBytes?: number; maxPerHost?: number };
}

export const DEFAULT_SERVER_OPTIONS: ServerOptions = {
  logLimitBytes: 16 * 1024 * 1024,
  hostLostAfterMs: 30_000,
  pollMs: 250,
  timeoutGraceMs: 30_000,
  batchSize: 1000,
  heartbeatMs: 5_000,
  hostPolicy: DEFAULT_HOST_POLICY,
};

export interface ServerContext {
  serverId: string;
  store: Store;
  log: Logger;
  events: ServerEventBus;
  metrics: Metrics;
  auth: Authenticator;
  options: ServerOptions;
  /** Request bodies: read as they stream, capped, under one memory budget (http/body-intake.ts). */
  bodies: BodyIntake;
}
