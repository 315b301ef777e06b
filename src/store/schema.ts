/**
 * Row types: the tables as the database holds them. Domain types (src/core, server) are built from these in
 * the query modules; nothing outside src/store should need these names except through those functions.
 * A migration that adds a table adds its row type here.
 */
import type { ColumnType, Generated, Insertable, Selectable } from 'kysely';
import type { HostMirror } from '../core/host.ts';
import type { CacheOutcomeMsg, HostCacheMsg, JobCacheMsg } from '../core/agent-protocol.ts';
import type { HostPower } from '../core/power.ts';
import type { GitHubTables } from './github-schema.ts';

/** The server's answer to a job's cache.ask (jobs.cache_answer): may that attempt commit its cache, and with what ref and commit. */
export interface CacheAnswerRow {
  attempt: number;
  write: boolean;
  ref?: string;
  commit?: string;
  reason?: string;
  /** When the server answered (ISO 8601). */
  at: string;
}

type Timestamp = ColumnType<Date, Date | string | undefined, Date | string>;
type NullableTimestamp = ColumnType<Date | null, Date | string | null | undefined, Date | string | null>;
type Json<T> = ColumnType<T, string, string>;

export interface JobsTable {
  id: Generated<number>;
  tenant: string;
  state: string;
  attempt: Generated<number>;
  arch: string;
  cpus: number;
  memory_bytes: number;
  disk_bytes: number;
  host_labels: Json<string[]>;
  labels: Json<string[]>;
  image: string;
  command: Json<string[]>;
  env: Json<Record<string, string>>;
  /** Names of env entries that are secrets (migration 0010). */
  secret_env: ColumnType<string[], string | undefined, string>;
  /** The job's warm cache (migration 0030); null: none. */
  cache: ColumnType<JobCacheMsg | null, string | null | undefined, string | null>;
  /** What happened to the job's cache, from its result (migration 0031); null: no cache, or not finished. */
  cache_outcome: ColumnType<CacheOutcomeMsg | null, string | null | undefined, string | null>;
  /** The server's answer to the job's cache.ask (migration 0032); null: never asked. */
  cache_answer: ColumnType<CacheAnswerRow | null, string | null | undefined, string | null>;
  /** The GitHub repository a runner VM serves (migration 0012): its egress allowlist applies. */
  egress_repo: ColumnType<string | null, string | null | undefined, string | null>;
  cwd: string | null;
  timeout_ms: number;
  network: string;
  priority: Generated<number>;
  host_id: number | null;
  exit_code: number | null;
  error_code: string | null;
  error_message: string | null;
  cancel_requested: Generated<boolean>;
  log_bytes: Generated<number>;
  log_truncated: Generated<boolean>;
  submitted_by: number | null;
  created_at: Generated<Date>;
  placed_at: NullableTimestamp;
  booting_at: NullableTimestamp;
  running_at: NullableTimestamp;
  finished_at: NullableTimestamp;
}

export interface JobEventsTable {
  id: Generated<number>;
  job_id: number;
  attempt: number;
  state: string;
  host_id: number | null;
  detail: string | null;
  at: Generated<Date>;
}

export interface JobLogsTable {
  id: Generated<number>;
  job_id: number;
  attempt: number;
  seq: number;
  /** 1 stdout, 2 stderr, 3 kiln's own note (e.g. "log limit reached"). */
  stream: number;
  data: Uint8Array;
}

export interface HostsTable {
  id: Generated<number>;
  name: string;
  state: string;
  cordoned: Generated<boolean>;
  drain_requested: Generated<boolean>;
  arch: string;
  cpus: number;
  memory_bytes: number;
  disk_bytes: number;
  accel: string;
  labels: Json<string[]>;
  driver: string;
  agent_version: string;
  server_id: string | null;
  connected_at: NullableTimestamp;
  last_seen_at: Timestamp;
  created_at: Generated<Date>;
  mirror: ColumnType<HostMirror | null, string | null | undefined, string | null>;
  /** The warm caches the host's agent last reported (migration 0030); null: none reported. */
  caches: ColumnType<HostCacheMsg[] | null, string | null | undefined, string | null>;
  power: ColumnType<HostPower | null, string | null | undefined, string | null>;
  state_since: Generated<Date>;
  wake_failures: Generated<number>;
  wake_marked_until: NullableTimestamp;
  /** SHA-256 of the per-host credential issued at first registration (migration 0010). */
  secret_hash: ColumnType<string | null, string | null | undefined, string | null>;
  registered_cpus: ColumnType<number | null, number | null | undefined, number | null>;
  registered_memory_bytes: ColumnType<number | null, number | null | undefined, number | null>;
  registered_disk_bytes: ColumnType<number | null, number | null | undefined, number | null>;
}

export interface PowerRequestsTable {
  id: Generated<number>;
  host_id: number;
  kind: 'sleep' | 'wake';
  state: 'pending' | 'sent' | 'done' | 'failed' | 'cancelled';
  /** demand | min_awake | idle | operator */
  reason: string;
  jobs: Generated<number>;
  attempts: Generated<number>;
  lease_owner: string | null;
  lease_until: NullableTimestamp;
  not_before: Generated<Date>;
  deadline: NullableTimestamp;
  error: string | null;
  created_at: Generated<Date>;
  sent_at: NullableTimestamp;
  done_at: NullableTimestamp;
}

export interface TokensTable {
  id: Generated<number>;
  name: string;
  role: string;
  tenant: string;
  secret_hash: string;
  created_at: Generated<Date>;
  last_used_at: NullableTimestamp;
  revoked_at: NullableTimestamp;
}

export interface TenantsTable {
  name: string;
  max_concurrent: number | null;
  last_placed_at: NullableTimestamp;
}

export interface ServersTable {
  id: string;
  url: string | null;
  started_at: Generated<Date>;
  last_seen_at: Timestamp;
}

export interface JobSubmissionsTable {
  tenant: string;
  idempotency_key: string;
  request_hash: string;
  job_id: number;
  created_at: Generated<Date>;
}

export interface Database extends GitHubTables {
  jobs: JobsTable;
  job_events: JobEventsTable;
  job_logs: JobLogsTable;
  hosts: HostsTable;
  tokens: TokensTable;
  tenants: TenantsTable;
  servers: ServersTable;
  power_requests: PowerRequestsTable;
  job_submissions: JobSubmissionsTable;
  egress_policies: EgressPoliciesTable;
}

/** Egress allowlists per tenant or GitHub repository (migration 0012). */
export interface EgressPoliciesTable {
  kind: string;
  scope: string;
  allow: Json<string[]>;
  updated_at: Generated<Date>;
}

export type JobRow = Selectable<JobsTable>;
export type NewJobRow = Insertable<JobsTable>;
export type HostRow = Selectable<HostsTable>;
export type TokenRow = Selectable<TokensTable>;
export type JobEventRow = Selectable<JobEventsTable>;
export type PowerRequestRow = Selectable<PowerRequestsTable>;
