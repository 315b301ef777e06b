/** Row types of the GitHub tables (migration 0100-github); merged into `Database` in schema.ts. */
import type { ColumnType, Generated, Selectable } from 'kysely';

type NullableTimestamp = ColumnType<Date | null, Date | string | null | undefined, Date | string | null>;
type Json<T> = ColumnType<T, string, string>;

export interface GitHubDeliveriesTable {
  delivery_id: string;
  event: string;
  action: string | null;
  hook_id: string | null;
  payload: Json<unknown>;
  status: Generated<string>;
  outcome: string | null;
  received_at: Generated<Date>;
  processed_at: NullableTimestamp;
}

export interface GitHubJobsTable {
  job_id: number;
  run_attempt: number;
  run_id: number;
  repo: string;
  owner: string;
  owner_type: string;
  private: boolean;
  installation_id: number | null;
  labels: Json<string[]>;
  demand_key: string | null;
  state: string;
  decision: string;
  reason_code: string | null;
  reason: string | null;
  checked_at: NullableTimestamp;
  failures: Generated<number>;
  next_attempt_at: NullableTimestamp;
  runner_name: string | null;
  conclusion: string | null;
  workflow: string | null;
  head_branch: string | null;
  sender: string | null;
  org: string | null;
  queued_at: NullableTimestamp;
  started_at: NullableTimestamp;
  completed_at: NullableTimestamp;
  created_at: Generated<Date>;
  updated_at: Generated<Date>;
}

export interface GitHubJobActionsTable {
  job_id: number;
  run_attempt: number;
  action: string;
  delivery_id: string;
  at: Generated<Date>;
}

export interface GitHubRunnersTable {
  id: Generated<number>;
  name: string;
  demand_key: string;
  scope: string;
  owner: string;
  repo: string | null;
  installation_id: number;
  labels: Json<string[]>;
  for_job_id: number | null;
  for_run_attempt: number | null;
  runner_id: number | null;
  kiln_job_id: number | null;
  state: string;
  job_id: number | null;
  run_attempt: number | null;
  surplus_since: NullableTimestamp;
  last_error: string | null;
  created_at: Generated<Date>;
  online_at: NullableTimestamp;
  ended_at: NullableTimestamp;
}

export interface GitHubUsageTable {
  job_id: number;
  run_attempt: number;
  repo: string;
  org: string | null;
  sender: string | null;
  labels: Json<string[]>;
  workflow: string | null;
  runner_name: string | null;
  kiln_job_id: number | null;
  host_id: number | null;
  cpus: number | null;
  memory_bytes: number | null;
  conclusion: string | null;
  queued_at: NullableTimestamp;
  started_at: NullableTimestamp;
  completed_at: NullableTimestamp;
}

export interface GitHubTables {
  github_deliveries: GitHubDeliveriesTable;
  github_jobs: GitHubJobsTable;
  github_job_actions: GitHubJobActionsTable;
  github_runners: GitHubRunnersTable;
  github_usage: GitHubUsageTable;
}

export type GitHubJobRow = Selectable<GitHubJobsTable>;
export type GitHubRunnerRow = Selectable<GitHubRunnersTable>;
export type GitHubUsageRow = Selectable<GitHubUsageTable>;
