import { sql, type Kysely } from 'kysely';

/**
 * GitHub Actions: webhook deliveries (durable intake, dedupe on the delivery id), the per-(job, attempt)
 * record with its forward-only state and kiln's decision, the (job, attempt, action) keys already applied
 * (semantic dedupe across hooks), kiln's JIT runners, and usage records per job.
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await sql`
    CREATE TABLE github_deliveries (
      delivery_id text PRIMARY KEY,
      event text NOT NULL,
      action text,
      hook_id text,
      payload jsonb NOT NULL,
      status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending','done','failed')),
      outcome text,
      received_at timestamptz NOT NULL DEFAULT now(),
      processed_at timestamptz
    )`.execute(db);
  await sql`CREATE INDEX github_deliveries_pending ON github_deliveries (received_at) WHERE status = 'pending'`.execute(db);
  await sql`
    CREATE TABLE github_jobs (
      job_id bigint NOT NULL,
      run_attempt integer NOT NULL,
      run_id bigint NOT NULL,
      repo text NOT NULL,
      owner text NOT NULL,
      owner_type text NOT NULL,
      private boolean NOT NULL,
      installation_id bigint,
      labels jsonb NOT NULL DEFAULT '[]',
      demand_key text,
      state text NOT NULL CHECK (state IN ('waiting','queued','in_progress','completed')),
      decision text NOT NULL CHECK (decision IN ('pending','accepted','ignored','refused')),
      reason_code text,
      reason text,
      checked_at timestamptz,
      failures integer NOT NULL DEFAULT 0,
      next_attempt_at timestamptz,
      runner_name text,
      conclusion text,
      workflow text,
      head_branch text,
      sender text,
      org text,
      queued_at timestamptz,
      started_at timestamptz,
      completed_at timestamptz,
      created_at timestamptz NOT NULL DEFAULT now(),
      updated_at timestamptz NOT NULL DEFAULT now(),
      PRIMARY KEY (job_id, run_attempt)
    )`.execute(db);
  await sql`CREATE INDEX github_jobs_demand ON github_jobs (demand_key, created_at) WHERE state = 'queued' AND decision IN ('pending','accepted')`.execute(db);
  await sql`
    CREATE TABLE github_job_actions (
      job_id bigint NOT NULL,
      run_attempt integer NOT NULL,
      action text NOT NULL,
      delivery_id text NOT NULL,
      at timestamptz NOT NULL DEFAULT now(),
      PRIMARY KEY (job_id, run_attempt, action)
    )`.execute(db);
  await sql`
    CREATE TABLE github_runners (
      id bigserial PRIMARY KEY,
      name text NOT NULL UNIQUE,
      demand_key text NOT NULL,
      scope text NOT NULL CHECK (scope IN ('repo','org')),
      owner text NOT NULL,
      repo text,
      installation_id bigint NOT NULL,
      labels jsonb NOT NULL,
      for_job_id bigint,
      for_run_attempt integer,
      runner_id bigint,
      kiln_job_id bigint,
      state text NOT NULL CHECK (state IN ('pending','starting','online','busy','stopping','gone')),
      job_id bigint,
      run_attempt integer,
      surplus_since timestamptz,
      last_error text,
      created_at timestamptz NOT NULL DEFAULT now(),
      online_at timestamptz,
      ended_at timestamptz
    )`.execute(db);
  await sql`CREATE INDEX github_runners_live ON github_runners (demand_key) WHERE state <> 'gone'`.execute(db);
  await sql`CREATE INDEX github_runners_kiln_job ON github_runners (kiln_job_id)`.execute(db);
  await sql`
    CREATE TABLE github_usage (
      job_id bigint NOT NULL,
      run_attempt integer NOT NULL,
      repo text NOT NULL,
      org text,
      sender text,
      labels jsonb NOT NULL DEFAULT '[]',
      workflow text,
      runner_name text,
      kiln_job_id bigint,
      host_id bigint,
      cpus integer,
      memory_bytes bigint,
      conclusion text,
      queued_at timestamptz,
      started_at timestamptz,
      completed_at timestamptz,
      PRIMARY KEY (job_id, run_attempt)
    )`.execute(db);
  await sql`CREATE INDEX github_usage_repo ON github_usage (repo, queued_at)`.execute(db);
}
