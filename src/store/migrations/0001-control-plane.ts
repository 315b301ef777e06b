import { sql, type Kysely } from 'kysely';

/** Jobs, their transitions and logs; hosts; tokens; tenants; server replicas. */
export async function up(db: Kysely<unknown>): Promise<void> {
  await sql`
    CREATE TABLE jobs (
      id bigserial PRIMARY KEY,
      tenant text NOT NULL DEFAULT 'default',
      state text NOT NULL CHECK (state IN ('queued','placed','booting','running','succeeded','failed','cancelled','timed_out','lost')),
      attempt integer NOT NULL DEFAULT 1,
      arch text NOT NULL,
      cpus integer NOT NULL CHECK (cpus > 0),
      memory_bytes bigint NOT NULL CHECK (memory_bytes > 0),
      disk_bytes bigint NOT NULL CHECK (disk_bytes > 0),
      host_labels jsonb NOT NULL DEFAULT '[]',
      labels jsonb NOT NULL DEFAULT '[]',
      image text NOT NULL,
      command jsonb NOT NULL,
      env jsonb NOT NULL DEFAULT '{}',
      cwd text,
      timeout_ms integer NOT NULL,
      network text NOT NULL DEFAULT 'none',
      priority integer NOT NULL DEFAULT 0,
      host_id bigint,
      exit_code integer,
      error_code text,
      error_message text,
      cancel_requested boolean NOT NULL DEFAULT false,
      log_bytes bigint NOT NULL DEFAULT 0,
      log_truncated boolean NOT NULL DEFAULT false,
      submitted_by bigint,
      created_at timestamptz NOT NULL DEFAULT now(),
      placed_at timestamptz,
      booting_at timestamptz,
      running_at timestamptz,
      finished_at timestamptz
    )`.execute(db);
  await sql`CREATE INDEX jobs_queued ON jobs (priority DESC, id) WHERE state = 'queued'`.execute(db);
  await sql`CREATE INDEX jobs_active_host ON jobs (host_id) WHERE state IN ('placed','booting','running')`.execute(db);
  await sql`CREATE INDEX jobs_tenant_state ON jobs (tenant, state)`.execute(db);
  await sql`
    CREATE TABLE job_events (
      id bigserial PRIMARY KEY,
      job_id bigint NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
      attempt integer NOT NULL,
      state text NOT NULL,
      host_id bigint,
      detail text,
      at timestamptz NOT NULL DEFAULT now()
    )`.execute(db);
  await sql`CREATE INDEX job_events_job ON job_events (job_id, id)`.execute(db);
  await sql`
    CREATE TABLE job_logs (
      id bigserial PRIMARY KEY,
      job_id bigint NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
      attempt integer NOT NULL,
      seq bigint NOT NULL,
      stream smallint NOT NULL,
      data bytea NOT NULL,
      UNIQUE (job_id, attempt, seq)
    )`.execute(db);
  await sql`
    CREATE TABLE hosts (
      id bigserial PRIMARY KEY,
      name text NOT NULL UNIQUE,
      state text NOT NULL CHECK (state IN ('online','draining','asleep','waking','offline')),
      cordoned boolean NOT NULL DEFAULT false,
      drain_requested boolean NOT NULL DEFAULT false,
      arch text NOT NULL,
      cpus integer NOT NULL,
      memory_bytes bigint NOT NULL,
      disk_bytes bigint NOT NULL,
      accel text NOT NULL,
      labels jsonb NOT NULL DEFAULT '[]',
      driver text NOT NULL,
      agent_version text NOT NULL,
      server_id text,
      connected_at timestamptz,
      last_seen_at timestamptz NOT NULL DEFAULT now(),
      created_at timestamptz NOT NULL DEFAULT now()
    )`.execute(db);
  await sql`
    CREATE TABLE tokens (
      id bigserial PRIMARY KEY,
      name text NOT NULL,
      role text NOT NULL CHECK (role IN ('admin','operator','read-only','agent')),
      tenant text NOT NULL DEFAULT 'default',
      secret_hash text NOT NULL UNIQUE,
      created_at timestamptz NOT NULL DEFAULT now(),
      last_used_at timestamptz,
      revoked_at timestamptz
    )`.execute(db);
  await sql`
    CREATE TABLE tenants (
      name text PRIMARY KEY,
      max_concurrent integer CHECK (max_concurrent IS NULL OR max_concurrent >= 0)
    )`.execute(db);
  await sql`
    CREATE TABLE servers (
      id text PRIMARY KEY,
      url text,
      started_at timestamptz NOT NULL DEFAULT now(),
      last_seen_at timestamptz NOT NULL DEFAULT now()
    )`.execute(db);
}
