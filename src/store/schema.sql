-- kiln database schema, generated from src/store/migrations by src/store/schema-snapshot.ts.
-- Do not edit. After adding a migration: KILN_UPDATE_SCHEMA_SNAPSHOT=1 node scripts/test.mjs schema-snapshot

TABLE egress_policies
  kind text NOT NULL
  scope text NOT NULL
  allow jsonb NOT NULL
  updated_at timestamp with time zone NOT NULL DEFAULT now()
  CONSTRAINT egress_policies_kind_check CHECK ((kind = ANY (ARRAY['tenant'::text, 'repo'::text])))
  CONSTRAINT egress_policies_pkey PRIMARY KEY (kind, scope)
  CREATE UNIQUE INDEX egress_policies_pkey ON egress_policies USING btree (kind, scope)

TABLE github_deliveries
  delivery_id text NOT NULL
  event text NOT NULL
  action text
  hook_id text
  payload jsonb NOT NULL
  status text NOT NULL DEFAULT 'pending'::text
  outcome text
  received_at timestamp with time zone NOT NULL DEFAULT now()
  processed_at timestamp with time zone
  CONSTRAINT github_deliveries_pkey PRIMARY KEY (delivery_id)
  CONSTRAINT github_deliveries_status_check CHECK ((status = ANY (ARRAY['pending'::text, 'done'::text, 'failed'::text])))
  CREATE INDEX github_deliveries_pending ON github_deliveries USING btree (received_at) WHERE (status = 'pending'::text)
  CREATE UNIQUE INDEX github_deliveries_pkey ON github_deliveries USING btree (delivery_id)

TABLE github_job_actions
  job_id bigint NOT NULL
  run_attempt integer NOT NULL
  action text NOT NULL
  delivery_id text NOT NULL
  at timestamp with time zone NOT NULL DEFAULT now()
  CONSTRAINT github_job_actions_pkey PRIMARY KEY (job_id, run_attempt, action)
  CREATE UNIQUE INDEX github_job_actions_pkey ON github_job_actions USING btree (job_id, run_attempt, action)

TABLE github_jobs
  job_id bigint NOT NULL
  run_attempt integer NOT NULL
  run_id bigint NOT NULL
  repo text NOT NULL
  owner text NOT NULL
  owner_type text NOT NULL
  private boolean NOT NULL
  installation_id bigint
  labels jsonb NOT NULL DEFAULT '[]'::jsonb
  demand_key text
  state text NOT NULL
  decision text NOT NULL
  reason_code text
  reason text
  checked_at timestamp with time zone
  failures integer NOT NULL DEFAULT 0
  next_attempt_at timestamp with time zone
  runner_name text
  conclusion text
  workflow text
  head_branch text
  sender text
  org text
  queued_at timestamp with time zone
  started_at timestamp with time zone
  completed_at timestamp with time zone
  created_at timestamp with time zone NOT NULL DEFAULT now()
  updated_at timestamp with time zone NOT NULL DEFAULT now()
  CONSTRAINT github_jobs_decision_check CHECK ((decision = ANY (ARRAY['pending'::text, 'accepted'::text, 'ignored'::text, 'refused'::text])))
  CONSTRAINT github_jobs_pkey PRIMARY KEY (job_id, run_attempt)
  CONSTRAINT github_jobs_state_check CHECK ((state = ANY (ARRAY['waiting'::text, 'queued'::text, 'in_progress'::text, 'completed'::text])))
  CREATE INDEX github_jobs_demand ON github_jobs USING btree (demand_key, created_at) WHERE ((state = 'queued'::text) AND (decision = ANY (ARRAY['pending'::text, 'accepted'::text])))
  CREATE UNIQUE INDEX github_jobs_pkey ON github_jobs USING btree (job_id, run_attempt)

TABLE github_runners
  id bigint NOT NULL DEFAULT nextval('github_runners_id_seq'::regclass)
  name text NOT NULL
  demand_key text NOT NULL
  scope text NOT NULL
  owner text NOT NULL
  repo text
  installation_id bigint NOT NULL
  labels jsonb NOT NULL
  for_job_id bigint
  for_run_attempt integer
  runner_id bigint
  kiln_job_id bigint
  state text NOT NULL
  job_id bigint
  run_attempt integer
  surplus_since timestamp with time zone
  last_error text
  created_at timestamp with time zone NOT NULL DEFAULT now()
  online_at timestamp with time zone
  ended_at timestamp with time zone
  CONSTRAINT github_runners_name_key UNIQUE (name)
  CONSTRAINT github_runners_pkey PRIMARY KEY (id)
  CONSTRAINT github_runners_scope_check CHECK ((scope = ANY (ARRAY['repo'::text, 'org'::text])))
  CONSTRAINT github_runners_state_check CHECK ((state = ANY (ARRAY['pending'::text, 'starting'::text, 'online'::text, 'busy'::text, 'stopping'::text, 'gone'::text])))
  CREATE INDEX github_runners_kiln_job ON github_runners USING btree (kiln_job_id)
  CREATE INDEX github_runners_live ON github_runners USING btree (demand_key) WHERE (state <> 'gone'::text)
  CREATE UNIQUE INDEX github_runners_name_key ON github_runners USING btree (name)
  CREATE UNIQUE INDEX github_runners_pkey ON github_runners USING btree (id)

TABLE github_usage
  job_id bigint NOT NULL
  run_attempt integer NOT NULL
  repo text NOT NULL
  org text
  sender text
  labels jsonb NOT NULL DEFAULT '[]'::jsonb
  workflow text
  runner_name text
  kiln_job_id bigint
  host_id bigint
  cpus integer
  memory_bytes bigint
  conclusion text
  queued_at timestamp with time zone
  started_at timestamp with time zone
  completed_at timestamp with time zone
  CONSTRAINT github_usage_pkey PRIMARY KEY (job_id, run_attempt)
  CREATE INDEX github_usage_kiln_job ON github_usage USING btree (kiln_job_id) WHERE (kiln_job_id IS NOT NULL)
  CREATE UNIQUE INDEX github_usage_pkey ON github_usage USING btree (job_id, run_attempt)
  CREATE INDEX github_usage_repo ON github_usage USING btree (repo, queued_at)

TABLE hosts
  id bigint NOT NULL DEFAULT nextval('hosts_id_seq'::regclass)
  name text NOT NULL
  state text NOT NULL
  cordoned boolean NOT NULL DEFAULT false
  drain_requested boolean NOT NULL DEFAULT false
  arch text NOT NULL
  cpus integer NOT NULL
  memory_bytes bigint NOT NULL
  disk_bytes bigint NOT NULL
  accel text NOT NULL
  labels jsonb NOT NULL DEFAULT '[]'::jsonb
  driver text NOT NULL
  agent_version text NOT NULL
  server_id text
  connected_at timestamp with time zone
  last_seen_at timestamp with time zone NOT NULL DEFAULT now()
  created_at timestamp with time zone NOT NULL DEFAULT now()
  mirror jsonb
  secret_hash text
  registered_cpus integer
  registered_memory_bytes bigint
  registered_disk_bytes bigint
  power jsonb
  state_since timestamp with time zone NOT NULL DEFAULT now()
  wake_failures integer NOT NULL DEFAULT 0
  wake_marked_until timestamp with time zone
  caches jsonb
  CONSTRAINT hosts_name_key UNIQUE (name)
  CONSTRAINT hosts_pkey PRIMARY KEY (id)
  CONSTRAINT hosts_state_check CHECK ((state = ANY (ARRAY['online'::text, 'draining'::text, 'asleep'::text, 'waking'::text, 'offline'::text])))
  CREATE UNIQUE INDEX hosts_name_key ON hosts USING btree (name)
  CREATE UNIQUE INDEX hosts_pkey ON hosts USING btree (id)
  CREATE TRIGGER hosts_state_since BEFORE UPDATE OF state ON hosts FOR EACH ROW WHEN ((old.state IS DISTINCT FROM new.state)) EXECUTE FUNCTION kiln_host_state_since()

TABLE job_events
  id bigint NOT NULL DEFAULT nextval('job_events_id_seq'::regclass)
  job_id bigint NOT NULL
  attempt integer NOT NULL
  state text NOT NULL
  host_id bigint
  detail text
  at timestamp with time zone NOT NULL DEFAULT now()
  CONSTRAINT job_events_job_id_fkey FOREIGN KEY (job_id) REFERENCES jobs(id) ON DELETE CASCADE
  CONSTRAINT job_events_pkey PRIMARY KEY (id)
  CREATE INDEX job_events_job ON job_events USING btree (job_id, id)
  CREATE UNIQUE INDEX job_events_pkey ON job_events USING btree (id)

TABLE job_logs
  id bigint NOT NULL DEFAULT nextval('job_logs_id_seq'::regclass)
  job_id bigint NOT NULL
  attempt integer NOT NULL
  seq bigint NOT NULL
  stream smallint NOT NULL
  data bytea NOT NULL
  CONSTRAINT job_logs_job_id_attempt_seq_key UNIQUE (job_id, attempt, seq)
  CONSTRAINT job_logs_job_id_fkey FOREIGN KEY (job_id) REFERENCES jobs(id) ON DELETE CASCADE
  CONSTRAINT job_logs_pkey PRIMARY KEY (id)
  CREATE UNIQUE INDEX job_logs_job_id_attempt_seq_key ON job_logs USING btree (job_id, attempt, seq)
  CREATE UNIQUE INDEX job_logs_pkey ON job_logs USING btree (id)

TABLE job_submissions
  tenant text NOT NULL
  idempotency_key text NOT NULL
  request_hash text NOT NULL
  job_id bigint NOT NULL
  created_at timestamp with time zone NOT NULL DEFAULT now()
  CONSTRAINT job_submissions_job_id_fkey FOREIGN KEY (job_id) REFERENCES jobs(id) ON DELETE CASCADE
  CONSTRAINT job_submissions_pkey PRIMARY KEY (tenant, idempotency_key)
  CREATE INDEX job_submissions_created ON job_submissions USING btree (created_at)
  CREATE UNIQUE INDEX job_submissions_pkey ON job_submissions USING btree (tenant, idempotency_key)

TABLE jobs
  id bigint NOT NULL DEFAULT nextval('jobs_id_seq'::regclass)
  tenant text NOT NULL DEFAULT 'default'::text
  state text NOT NULL
  attempt integer NOT NULL DEFAULT 1
  arch text NOT NULL
  cpus integer NOT NULL
  memory_bytes bigint NOT NULL
  disk_bytes bigint NOT NULL
  host_labels jsonb NOT NULL DEFAULT '[]'::jsonb
  labels jsonb NOT NULL DEFAULT '[]'::jsonb
  image text NOT NULL
  command jsonb NOT NULL
  env jsonb NOT NULL DEFAULT '{}'::jsonb
  cwd text
  timeout_ms integer NOT NULL
  network text NOT NULL DEFAULT 'none'::text
  priority integer NOT NULL DEFAULT 0
  host_id bigint
  exit_code integer
  error_code text
  error_message text
  cancel_requested boolean NOT NULL DEFAULT false
  log_bytes bigint NOT NULL DEFAULT 0
  log_truncated boolean NOT NULL DEFAULT false
  submitted_by bigint
  created_at timestamp with time zone NOT NULL DEFAULT now()
  placed_at timestamp with time zone
  booting_at timestamp with time zone
  running_at timestamp with time zone
  finished_at timestamp with time zone
  secret_env jsonb NOT NULL DEFAULT '[]'::jsonb
  egress_repo text
  cache jsonb
  cache_outcome jsonb
  cache_answer jsonb
  CONSTRAINT jobs_cpus_check CHECK ((cpus > 0))
  CONSTRAINT jobs_disk_bytes_check CHECK ((disk_bytes > 0))
  CONSTRAINT jobs_memory_bytes_check CHECK ((memory_bytes > 0))
  CONSTRAINT jobs_pkey PRIMARY KEY (id)
  CONSTRAINT jobs_state_check CHECK ((state = ANY (ARRAY['queued'::text, 'placed'::text, 'booting'::text, 'running'::text, 'succeeded'::text, 'failed'::text, 'cancelled'::text, 'timed_out'::text, 'lost'::text])))
  CREATE INDEX jobs_active_host ON jobs USING btree (host_id) WHERE (state = ANY (ARRAY['placed'::text, 'booting'::text, 'running'::text]))
  CREATE INDEX jobs_cache_committed ON jobs USING btree ((((cache_outcome -> 'committed'::text) ->> 'id'::text))) WHERE (cache_outcome ? 'committed'::text)
  CREATE INDEX jobs_finished_at ON jobs USING btree (finished_at) WHERE (finished_at IS NOT NULL)
  CREATE UNIQUE INDEX jobs_pkey ON jobs USING btree (id)
  CREATE INDEX jobs_queued_tenant ON jobs USING btree (tenant, priority DESC, id) WHERE (state = 'queued'::text)
  CREATE INDEX jobs_tenant_state ON jobs USING btree (tenant, state)

TABLE kiln_migrations
  name character varying NOT NULL
  timestamp character varying NOT NULL
  CONSTRAINT kiln_migrations_pkey PRIMARY KEY (name)
  CREATE UNIQUE INDEX kiln_migrations_pkey ON kiln_migrations USING btree (name)

TABLE kiln_migrations_lock
  id character varying NOT NULL
  is_locked integer NOT NULL DEFAULT 0
  CONSTRAINT kiln_migrations_lock_pkey PRIMARY KEY (id)
  CREATE UNIQUE INDEX kiln_migrations_lock_pkey ON kiln_migrations_lock USING btree (id)

TABLE power_requests
  id bigint NOT NULL DEFAULT nextval('power_requests_id_seq'::regclass)
  host_id bigint NOT NULL
  kind text NOT NULL
  state text NOT NULL
  reason text NOT NULL
  jobs integer NOT NULL DEFAULT 0
  attempts integer NOT NULL DEFAULT 0
  lease_owner text
  lease_until timestamp with time zone
  not_before timestamp with time zone NOT NULL DEFAULT now()
  deadline timestamp with time zone
  error text
  created_at timestamp with time zone NOT NULL DEFAULT now()
  sent_at timestamp with time zone
  done_at timestamp with time zone
  CONSTRAINT power_requests_host_id_fkey FOREIGN KEY (host_id) REFERENCES hosts(id) ON DELETE CASCADE
  CONSTRAINT power_requests_kind_check CHECK ((kind = ANY (ARRAY['sleep'::text, 'wake'::text])))
  CONSTRAINT power_requests_pkey PRIMARY KEY (id)
  CONSTRAINT power_requests_state_check CHECK ((state = ANY (ARRAY['pending'::text, 'sent'::text, 'done'::text, 'failed'::text, 'cancelled'::text])))
  CREATE UNIQUE INDEX power_requests_open ON power_requests USING btree (host_id) WHERE (state = ANY (ARRAY['pending'::text, 'sent'::text]))
  CREATE UNIQUE INDEX power_requests_pkey ON power_requests USING btree (id)
  CREATE INDEX power_requests_recent ON power_requests USING btree (created_at)

TABLE servers
  id text NOT NULL
  url text
  started_at timestamp with time zone NOT NULL DEFAULT now()
  last_seen_at timestamp with time zone NOT NULL DEFAULT now()
  CONSTRAINT servers_pkey PRIMARY KEY (id)
  CREATE UNIQUE INDEX servers_pkey ON servers USING btree (id)

TABLE tenants
  name text NOT NULL
  max_concurrent integer
  last_placed_at timestamp with time zone
  CONSTRAINT tenants_max_concurrent_check CHECK (((max_concurrent IS NULL) OR (max_concurrent >= 0)))
  CONSTRAINT tenants_pkey PRIMARY KEY (name)
  CREATE UNIQUE INDEX tenants_pkey ON tenants USING btree (name)

TABLE tokens
  id bigint NOT NULL DEFAULT nextval('tokens_id_seq'::regclass)
  name text NOT NULL
  role text NOT NULL
  tenant text NOT NULL DEFAULT 'default'::text
  secret_hash text NOT NULL
  created_at timestamp with time zone NOT NULL DEFAULT now()
  last_used_at timestamp with time zone
  revoked_at timestamp with time zone
  CONSTRAINT tokens_pkey PRIMARY KEY (id)
  CONSTRAINT tokens_role_check CHECK ((role = ANY (ARRAY['admin'::text, 'operator'::text, 'read-only'::text, 'viewer'::text, 'agent'::text])))
  CONSTRAINT tokens_secret_hash_key UNIQUE (secret_hash)
  CREATE UNIQUE INDEX tokens_pkey ON tokens USING btree (id)
  CREATE UNIQUE INDEX tokens_secret_hash_key ON tokens USING btree (secret_hash)
