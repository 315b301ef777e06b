/** Job queries: submit, read, claim (SKIP LOCKED), transitions with a timestamp each, cancel, requeue. */
import { sql } from 'kysely';
import type { CacheOutcomeMsg, LaunchSpec } from '../core/agent-protocol.ts';
import type { Arch } from '../core/arch.ts';
import type { Requirements } from '../core/requirements.ts';
import type { Job, JobSpec, JobTransition } from '../core/job.ts';
import type { StartedTimes } from '../core/timings.ts';
import { ACTIVE_STATES, JOB_STATE_LIST, canTransition, holdsHost, mayRequeue, nextJobState, type JobEvent, type JobState } from '../core/job-state.ts';
import type { Db, Tx } from './store.ts';
import type { CacheAnswerRow, JobRow } from './schema.ts';
import { batchRows, type BatchColumn } from './batch-rows.ts';
import { idIn } from './id-list.ts';

type Q = Db | Tx;

const iso = (d: Date | null): string | null => (d ? new Date(d).toISOString() : null);

export function jobFromRow(r: JobRow): Job {
  return {
    id: r.id,
    tenant: r.tenant,
    state: r.state as JobState,
    attempt: r.attempt,
    requirements: {
      arch: r.arch as Arch,
      cpus: r.cpus,
      memoryBytes: r.memory_bytes,
      diskBytes: r.disk_bytes,
      hostLabels: r.host_labels,
    },
    labels: r.labels,
    image: r.image,
    command: r.command,
    env: r.env,
    ...(r.secret_env && r.secret_env.length > 0 ? { secretEnv: r.secret_env } : {}),
    ...(r.cwd === null ? {} : { cwd: r.cwd }),
    ...(r.cache ? { cache: r.cache } : {}),
    ...(r.cache_outcome ? { cacheOutcome: r.cache_outcome } : {}),
    timeoutMs: r.timeout_ms,
    network: r.network === 'user' ? 'user' : 'none',
    priority: r.priority,
    ...(r.submitted_by === null ? {} : { submittedBy: r.submitted_by }),
    hostId: r.host_id,
    exitCode: r.exit_code,
    error: r.error_code ? { code: r.error_code, message: r.error_message ?? '' } : null,
    cancelRequested: r.cancel_requested,
    logBytes: r.log_bytes,
    logTruncated: r.log_truncated,
    createdAt: iso(r.created_at) ?? '',
    placedAt: iso(r.placed_at),
    bootingAt: iso(r.booting_at),
    runningAt: iso(r.running_at),
    finishedAt: iso(r.finished_at),
  };
}

/** A job as it is stored right after its insert (the columns' defaults), from its spec. */
function newJob(s: JobSpec, id: number, createdAt: string): Job {
  return {
    id,
    tenant: s.tenant,
    state: 'queued',
    attempt: 1,
    requirements: { ...s.requirements, hostLabels: [...s.requirements.hostLabels] },
    labels: [...s.labels],
    image: s.image,
    command: [...s.command],
    env: { ...s.env },
    ...(s.secretEnv && s.secretEnv.length > 0 ? { secretEnv: [...s.secretEnv] } : {}),
    ...(s.cwd !== undefined && s.cwd !== null ? { cwd: s.cwd } : {}),
    ...(s.cache ? { cache: { ...s.cache } } : {}),
    timeoutMs: s.timeoutMs,
    network: s.network === 'user' ? 'user' : 'none',
    priority: s.priority,
    ...(s.submittedBy !== undefined && s.submittedBy !== null ? { submittedBy: s.submittedBy } : {}),
    hostId: null,
    exitCode: null,
    error: null,
    cancelRequested: false,
    logBytes: 0,
    logTruncated: false,
    createdAt,
    placedAt: null,
    bootingAt: null,
    runningAt: null,
    finishedAt: null,
  };
}

export async function insertJobs(db: Db, specs: JobSpec[]): Promise<Job[]> {
  if (specs.length === 0) return [];
  const out: Job[] = [];
  // One statement per 1,000 jobs: the jobs and their first transition are written together (atomically).
  for (let i = 0; i < specs.length; i += 1000) {
    const payload = JSON.stringify(
      specs.slice(i, i + 1000).map((s, n) => ({
        n,
        tenant: s.tenant,
        arch: s.requirements.arch,
        cpus: s.requirements.cpus,
        memory_bytes: s.requirements.memoryBytes,
        disk_bytes: s.requirements.diskBytes,
        host_labels: s.requirements.hostLabels,
        labels: s.labels,
        image: s.image,
        command: s.command,
        env: s.env,
        secret_env: s.secretEnv ?? [],
        cwd: s.cwd ?? null,
        cache: s.cache ?? null,
        timeout_ms: s.timeoutMs,
        network: s.network,
        priority: s.priority,
        submitted_by: s.submittedBy ?? null,
        egress_repo: s.egressRepo ?? null,
      })),
    );
    // Only the ids and the time come back: the rest of each new job is what was sent (reading whole rows
    // back costs more than the insert on the embedded store).
    const batch = specs.slice(i, i + 1000);
    const r = await sql<{ id: number; created_at: Date }>`
      WITH ins AS (
        INSERT INTO jobs (tenant, state, arch, cpus, memory_bytes, disk_bytes, host_labels, labels, image, command, env, secret_env, cwd, cache, timeout_ms, network, priority, submitted_by, egress_repo)
        SELECT tenant, 'queued', arch, cpus, memory_bytes, disk_bytes, host_labels, labels, image, command, env, secret_env, cwd, cache, timeout_ms, network, priority, submitted_by, egress_repo
        FROM jsonb_to_recordset(${payload}::jsonb) AS v(tenant text, arch text, cpus int, memory_bytes bigint, disk_bytes bigint, host_labels jsonb, labels jsonb,
          image text, command jsonb, env jsonb, secret_env jsonb, cwd text, cache jsonb, timeout_ms int, network text, priority int, submitted_by bigint, egress_repo text, n int)
        ORDER BY n
        RETURNING id, created_at
      ), ev AS (
        INSERT INTO job_events (job_id, attempt, state) SELECT id, 1, 'queued' FROM ins
      )
      SELECT id, created_at FROM ins ORDER BY id`.execute(db);
    if (r.rows.length !== batch.length) throw new Error(`inserted ${r.rows.length} jobs for ${batch.length} submissions`);
    r.rows.forEach((row, k) => out.push(newJob(batch[k]!, row.id, iso(row.created_at) ?? '')));
  }
  return out;
}

export async function getJob(db: Q, id: number): Promise<Job | undefined> {
  const r = await db.selectFrom('jobs').selectAll().where('id', '=', id).executeTakeFirst();
  return r ? jobFromRow(r) : undefined;
}

export interface JobFilter {
  states?: JobState[];
  tenant?: string;
  hostId?: number;
  /** Only jobs with id < beforeId (pagination, newest first). */
  beforeId?: number;
  /**
   * Search text: a job id (`123` or `#123`), or a case-insensitive substring of the command's arguments, a
   * label, the image, the tenant or the error message. Never env values (they may be secrets).
   */
  text?: string;
  limit: number;
}

export async function listJobs(db: Q, f: JobFilter): Promise<Job[]> {
  let q = db.selectFrom('jobs').selectAll().orderBy('id', 'desc').limit(f.limit);
  if (f.states && f.states.length > 0) q = q.where('state', 'in', f.states);
  if (f.tenant !== undefined) q = q.where('tenant', '=', f.tenant);
  if (f.hostId !== undefined) q = q.where('host_id', '=', f.hostId);
  if (f.beforeId !== undefined) q = q.where('id', '<', f.beforeId);
  const text = f.text?.trim();
  if (text) {
    const like = `%${text.replace(/[\\%_]/g, (c) => `\\${c}`)}%`;
    const id = /^#?(\d{1,15})$/.exec(text)?.[1];
    const matches = sql<boolean>`(command::text ILIKE ${like} OR labels::text ILIKE ${like} OR image ILIKE ${like} OR tenant ILIKE ${like} OR coalesce(error_message, '') ILIKE ${like})`;
    q = q.where(id !== undefined ? sql<boolean>`(id = ${Number(id)} OR ${matches})` : matches);
  }
  return (await q.execute()).map(jobFromRow);
}

export async function jobTransitions(db: Q, id: number): Promise<JobTransition[]> {
  const rows = await db.selectFrom('job_events').selectAll().where('job_id', '=', id).orderBy('id').execute();
  return rows.map((r) => ({ attempt: r.attempt, state: r.state as JobState, hostId: r.host_id, detail: r.detail, at: iso(r.at) ?? '' }));
}

export async function countJobsByState(db: Q): Promise<Record<JobState, number>> {
  const rows = await db.selectFrom('jobs').select(['state', sql<number>`count(*)::int`.as('n')]).groupBy('state').execute();
  const out = Object.fromEntries(JOB_STATE_LIST.map((s) => [s, 0])) as Record<JobState, number>;
  for (const r of rows) out[r.state as JobState] = r.n;
  return out;
}

/** What one arch's free capacity could hold at best: the claim query skips jobs that cannot fit anywhere. */
export interface ClaimWindow {
  arch: Arch;
  maxCpus: number;
  maxMemoryBytes: number;
  maxDiskBytes: number;
}

/**
 * Locks up to `limit` queued jobs that some free host could hold, skipping rows other replicas hold
 * (FOR UPDATE SKIP LOCKED). Order is fair across tenants: each tenant's oldest job first (round robin by
 * rank within tenant, counting what each tenant already runs; ties go to the tenant served longest ago),
 * then priority, then age.
 */
/** What placement needs of a claimed job (the rest is read back only for the jobs actually placed). */
export interface ClaimedJob {
  id: number;
  tenant: string;
  attempt: number;
  createdAt: string;
  requirements: Requirements;
  /** The job's cache key (host-side), for placement's cache affinity. */
  cacheKey?: string;
}

export interface Claim {
  jobs: ClaimedJob[];
  /**
   * Whether queued jobs other than these remained when the claim ran (too big for the windows, locked by
   * another replica, or past the limit). Asked in the same statement, which saves a pass a round trip.
   * Undefined when nothing was claimed: the statement then returns no row to carry it (ask `anyQueued`).
   */
  more?: boolean;
}

export async function claimQueuedJobs(tx: Tx, limit: number, windows: ClaimWindow[]): Promise<Claim> {
  if (windows.length === 0 || limit <= 0) return { jobs: [] };
  const fits = sql.join(
    windows.map(
      (w) =>
        sql`(arch = ${w.arch} AND cpus <= ${Math.floor(w.maxCpus)} AND memory_bytes <= ${Math.floor(w.maxMemoryBytes)} AND disk_bytes <= ${Math.floor(w.maxDiskBytes)})`,
    ),
    sql` OR `,
  );
  // rank = how many jobs the tenant would have running if this one started next: a tenant with jobs
  // already running waits behind one with none, so a burst cannot starve a single job of another tenant.
  // Every step is an index walk whose cost does not depend on a plan guessed from table sizes (the embedded
  // store gathers no statistics between upkeeps, and caches this plan: pglite-dialect.ts), so a plan made
  // on an empty table stays right for a queue of 10,000:
  //   - qt: the tenants with queued jobs, one index probe each (a loose scan of jobs_queued_tenant, not a
  //     DISTINCT over every queued job);
  //   - tq: per tenant, what it runs now, counted only when two or more tenants wait (with one tenant the
  //     count shifts every rank equally), and when it was last served;
  //   - each tenant's queue is read from its head only (jobs_queued_tenant, in claim order): a pass never
  //     takes more than `limit` jobs of one tenant, so ranking more than that many of each would be wasted;
  //   - candidates are locked one by one in rank order (the lateral lookup by primary key), stopping at
  //     `limit`.
  // The windows are parameters: free room changes with every placement, and as literals each new window
  // was a new statement text, which the embedded store prepared and kept (~200 kB of its memory each, which
  // WebAssembly never gives back). No plan here depends on them (each is a filter on an index walk).
  const r = await sql<Pick<JobRow, 'id' | 'tenant' | 'attempt' | 'arch' | 'cpus' | 'memory_bytes' | 'disk_bytes' | 'host_labels' | 'created_at'> & { queued: number; cache_key: string | null }>`
    WITH RECURSIVE qt AS (
      (SELECT tenant FROM jobs WHERE state = 'queued' ORDER BY tenant LIMIT 1)
      UNION ALL
      SELECT (SELECT j.tenant FROM jobs j WHERE j.state = 'queued' AND j.tenant > qt.tenant ORDER BY j.tenant LIMIT 1) FROM qt WHERE qt.tenant IS NOT NULL
    ), tq AS MATERIALIZED (
      SELECT qt.tenant, t.last_placed_at AS served,
        CASE WHEN (SELECT count(*) FROM qt WHERE tenant IS NOT NULL) > 1
          THEN (SELECT count(*) FROM jobs a WHERE a.tenant = qt.tenant AND a.state IN ('placed','booting','running')) ELSE 0 END AS n
      FROM qt LEFT JOIN tenants t ON t.name = qt.tenant
      WHERE qt.tenant IS NOT NULL
    )
    SELECT j.*, (SELECT count(*)::int FROM (SELECT 1 FROM jobs WHERE state = 'queued' LIMIT ${sql.lit(Math.floor(limit) + 1)}) h) AS queued FROM (
      SELECT q.id, row_number() OVER (PARTITION BY tq.tenant ORDER BY q.priority DESC, q.id) + tq.n AS rank, q.priority, tq.served
      FROM tq CROSS JOIN LATERAL (
        SELECT id, priority FROM jobs WHERE state = 'queued' AND tenant = tq.tenant AND (${fits})
        ORDER BY priority DESC, id LIMIT ${sql.lit(limit * 2)}
      ) q
      ORDER BY rank, served NULLS FIRST, priority DESC, id
      LIMIT ${sql.lit(limit * 2)}
    ) c CROSS JOIN LATERAL (
      SELECT j.id, j.tenant, j.attempt, j.arch, j.cpus, j.memory_bytes, j.disk_bytes, j.host_labels, j.created_at, j.cache->>'key' AS cache_key FROM jobs j
      WHERE j.id = c.id AND j.state = 'queued' FOR UPDATE SKIP LOCKED
    ) j
    ORDER BY c.rank, c.served NULLS FIRST, c.priority DESC, c.id
    LIMIT ${sql.lit(Math.floor(limit))}`.execute(tx);
  const jobs = r.rows.map((x) => ({
    id: x.id,
    tenant: x.tenant,
    attempt: x.attempt,
    createdAt: iso(x.created_at) ?? '',
    requirements: { arch: x.arch as Arch, cpus: x.cpus, memoryBytes: x.memory_bytes, diskBytes: x.disk_bytes, hostLabels: x.host_labels },
    ...(x.cache_key ? { cacheKey: x.cache_key } : {}),
  }));
  // `queued` counts the claimed jobs too (at most limit + 1 of all): more than them means others remain.
  return r.rows.length === 0 ? { jobs } : { jobs, more: r.rows[0]!.queued > jobs.length };
}

/** How many jobs are queued (/metrics): an index-only count of the queue, not a count of every job. */
export async function countQueued(db: Q): Promise<number> {
  const r = await sql<{ n: number }>`SELECT count(*)::int AS n FROM jobs WHERE state = 'queued'`.execute(db);
  return r.rows[0]?.n ?? 0;
}

/** Whether any job is queued (the partial index on queued jobs answers it). */
export async function anyQueued(db: Q): Promise<boolean> {
  const r = await sql<{ x: boolean }>`SELECT EXISTS (SELECT 1 FROM jobs WHERE state = 'queued') AS x`.execute(db);
  return r.rows[0]?.x === true;
}

/**
 * Marks claimed jobs placed on hosts, in one statement, and records the transitions. With `serverId`, only
 * placements on hosts that replica owns and that take jobs (online, not cordoned) are made.
 */
/** A job just placed, with what its host needs to launch it. */
export interface PlacedJob {
  id: number;
  attempt: number;
  hostId: number;
  tenant: string;
  /** The GitHub repository a runner VM serves (its egress allowlist applies), else null. */
  egressRepo: string | null;
  launch: LaunchSpec;
}

export async function markPlaced(tx: Tx, placements: { jobId: number; hostId: number }[], serverId?: string): Promise<PlacedJob[]> {
  if (placements.length === 0) return [];
  const batch = batchRows('v', [['id', 'bigint'], ['host', 'bigint']], placements.map((p) => ({ id: p.jobId, host: p.hostId })));
  // 'queued' goes as a parameter, not a literal: a literal lets the planner of a cached plan drive the join
  // from the queued-jobs index, which is nearly empty when the plan is made between bursts, and then test
  // every queued job against every placement (1.2 s per pass at 10,000 queued). As a parameter it cannot
  // match that partial index in a cached (generic) plan, so the jobs are reached from the batch by primary
  // key; a plan made for the values at hand (PostgreSQL's unnamed statements, a prepared statement's first
  // runs) sees the index's size at that moment.
  // Per placement, one probe of the host by primary key (a lateral subquery with a limit runs once per row,
  // with its cheapest plan for one row: a plan cached for a handful of hosts cannot make it a scan of them
  // all per placement).
  const hostCheck =
    serverId === undefined
      ? sql``
      : sql`CROSS JOIN LATERAL (SELECT 1 FROM hosts h WHERE h.id = v.host AND h.server_id = ${serverId} AND h.state = 'online' AND NOT h.cordoned LIMIT 1) h`;
  const r = await sql<Pick<JobRow, 'id' | 'attempt' | 'tenant' | 'egress_repo' | 'arch' | 'cpus' | 'memory_bytes' | 'disk_bytes' | 'image' | 'command' | 'env' | 'secret_env' | 'cwd' | 'cache' | 'timeout_ms' | 'network'> & { host_id: number }>`
    WITH v AS (
      SELECT * FROM ${batch}
    ), upd AS (
      UPDATE jobs SET state = 'placed', host_id = v.host, placed_at = now()
      FROM v ${hostCheck}
      WHERE jobs.id = v.id AND jobs.state = ${'queued'}
      RETURNING jobs.id, jobs.attempt, jobs.host_id, jobs.tenant, jobs.arch, jobs.cpus, jobs.memory_bytes, jobs.disk_bytes, jobs.image, jobs.command, jobs.env,
        jobs.secret_env, jobs.cwd, jobs.cache, jobs.timeout_ms, jobs.network, jobs.egress_repo
    ), ev AS (
      INSERT INTO job_events (job_id, attempt, state, host_id) SELECT id, attempt, 'placed', host_id FROM upd
    ), served AS (
      INSERT INTO tenants (name, last_placed_at) SELECT DISTINCT tenant, now() FROM upd
      ON CONFLICT (name) DO UPDATE SET last_placed_at = excluded.last_placed_at
    )
    SELECT id, attempt, host_id, tenant, egress_repo, arch, cpus, memory_bytes, disk_bytes, image, command, env, secret_env, cwd, cache, timeout_ms, network FROM upd`.execute(tx);
  return r.rows.map((x) => ({
    id: x.id,
    attempt: x.attempt,
    hostId: x.host_id,
    tenant: x.tenant,
    egressRepo: x.egress_repo,
    launch: {
      arch: x.arch as Arch,
      cpus: x.cpus,
      memoryBytes: x.memory_bytes,
      diskBytes: x.disk_bytes,
      image: x.image,
      command: x.command,
      env: x.env,
      ...(x.secret_env.length > 0 ? { secretEnv: x.secret_env } : {}),
      ...(x.cwd === null ? {} : { cwd: x.cwd }),
      timeoutMs: x.timeout_ms,
      network: x.network === 'user' ? 'user' : 'none',
      ...(x.cache ? { cache: x.cache } : {}),
    },
  }));
}

const STATE_TIME: Partial<Record<JobState, 'placed_at' | 'booting_at' | 'running_at' | 'finished_at'>> = {
  placed: 'placed_at',
  booting: 'booting_at',
  running: 'running_at',
  succeeded: 'finished_at',
  failed: 'finished_at',
  cancelled: 'finished_at',
  timed_out: 'finished_at',
  lost: 'finished_at',
};

/** States from which `event` is allowed (derived from the pure state machine). */
export function statesAccepting(event: JobEvent): JobState[] {
  return JOB_STATE_LIST.filter((s) => canTransition(s, event));
}

export interface TransitionFields {
  exitCode?: number;
  error?: { code: string; message: string };
  detail?: string;
}

/**
 * Applies `event` to the job if it is still on `attempt` and in a state that accepts the event. Returns
 * the job after the change, or undefined when the event no longer applies (already finished, requeued, …):
 * callers treat that as "someone else got there first", which is what makes duplicates harmless.
 */
export async function transitionJob(
  db: Db,
  jobId: number,
  attempt: number | undefined,
  event: JobEvent | ((current: Job) => { event: JobEvent; fields?: TransitionFields } | undefined),
  fields: TransitionFields = {},
): Promise<{ job: Job; from: JobState } | undefined> {
  // Optimistic: read, decide, then one statement that changes the row only if it is still in the state we
  // read (and records the transition). A concurrent change makes it re-read; no explicit transaction.
  for (let tries = 0; tries < 5; tries++) {
    let q = db.selectFrom('jobs').selectAll().where('id', '=', jobId);
    if (attempt !== undefined) q = q.where('attempt', '=', attempt);
    const row = await q.executeTakeFirst();
    if (!row) return undefined;
    let ev: JobEvent;
    let f = fields;
    if (typeof event === 'function') {
      const chosen = event(jobFromRow(row));
      if (!chosen) return undefined;
      ev = chosen.event;
      f = { ...fields, ...chosen.fields };
    } else ev = event;
    const from = row.state as JobState;
    if (!canTransition(from, ev)) return undefined;
    const to = nextJobState(from, ev);
    const col = STATE_TIME[to];
    const r = await sql<JobRow>`
      WITH upd AS (
        UPDATE jobs SET state = ${to},
          placed_at = ${col === 'placed_at' ? sql`now()` : sql`placed_at`},
          booting_at = ${col === 'booting_at' ? sql`now()` : sql`booting_at`},
          running_at = ${col === 'running_at' ? sql`now()` : sql`running_at`},
          finished_at = ${col === 'finished_at' ? sql`now()` : sql`finished_at`},
          exit_code = ${f.exitCode !== undefined ? f.exitCode : sql`exit_code`},
          error_code = ${f.error ? f.error.code : sql`error_code`},
          error_message = ${f.error ? f.error.message.slice(0, 4000) : sql`error_message`}
        WHERE id = ${jobId} AND attempt = ${row.attempt} AND state = ${from} AND cancel_requested = ${row.cancel_requested}
        RETURNING *
      ), ev AS (
        INSERT INTO job_events (job_id, attempt, state, host_id, detail) SELECT id, attempt, state, host_id, ${f.detail ?? null} FROM upd
      )
      SELECT * FROM upd`.execute(db);
    const updated = r.rows[0];
    if (updated) return { job: jobFromRow(updated), from };
  }
  return undefined;
}

/** Current state, attempt and cancel flag of jobs, for the replica that runs them. */
export async function jobStatuses(db: Q, ids: number[]): Promise<{ id: number; attempt: number; state: JobState; cancelRequested: boolean; hostId: number | null }[]> {
  const out: { id: number; attempt: number; state: JobState; cancelRequested: boolean; hostId: number | null }[] = [];
  for (let i = 0; i < ids.length; i += 5000) {
    const rows = await db
      .selectFrom('jobs')
      .select(['id', 'attempt', 'state', 'cancel_requested', 'host_id'])
      .where(idIn('id', ids.slice(i, i + 5000)))
      .execute();
    for (const r of rows) out.push({ id: r.id, attempt: r.attempt, state: r.state as JobState, cancelRequested: r.cancel_requested, hostId: r.host_id });
  }
  return out;
}

/**
 * Attempts a job gets before it is failed instead of requeued: a job no host will start (an agent that
 * refuses its launch and reconnects) would otherwise go round for ever, disturbing every placement there.
 */
export const MAX_JOB_ATTEMPTS = 5;

/**
 * Marks an active job lost; when it had not started running (the state machine's `mayRequeue`) and no
 * cancel was asked for, requeues it as a new attempt at once (failing it instead after MAX_JOB_ATTEMPTS). Returns the job after the change and the state
 * it left, or undefined when it was no longer active on that attempt.
 */
export async function loseJob(db: Db, jobId: number, attempt: number, reason: string): Promise<{ job: Job; from: JobState; requeued: boolean } | undefined> {
  const lose: JobEvent = { type: 'lose', reason };
  return db.transaction().execute(async (tx) => {
    const row = await tx.selectFrom('jobs').selectAll().where('id', '=', jobId).where('attempt', '=', attempt).forUpdate().executeTakeFirst();
    if (!row) return undefined;
    const from = row.state as JobState;
    if (!canTransition(from, lose)) return undefined;
    const lost = nextJobState(from, lose);
    const neverStarted = mayRequeue(from) && !row.cancel_requested;
    const requeue = neverStarted && row.attempt < MAX_JOB_ATTEMPTS;
    if (neverStarted && !requeue) {
      await tx.insertInto('job_events').values({ job_id: jobId, attempt: row.attempt, state: 'failed', host_id: row.host_id, detail: reason }).execute();
      const failed = await tx
        .updateTable('jobs')
        .set({
          state: 'failed',
          finished_at: sql`now()`,
          error_code: 'job.too_many_attempts',
          error_message: `the job was lost before it started ${row.attempt} times (the last: ${reason}); it is not requeued again`.slice(0, 4000),
        })
        .where('id', '=', jobId)
        .returningAll()
        .executeTakeFirstOrThrow();
      return { job: jobFromRow(failed), from, requeued: false };
    }
    await tx
      .insertInto('job_events')
      .values({ job_id: jobId, attempt: row.attempt, state: lost, host_id: row.host_id, detail: reason })
      .execute();
    let updated: JobRow;
    if (requeue) {
      const again = nextJobState(lost, { type: 'requeue' });
      updated = await tx
        .updateTable('jobs')
        .set({ state: again, attempt: row.attempt + 1, host_id: null, placed_at: null, booting_at: null, running_at: null })
        .where('id', '=', jobId)
        .returningAll()
        .executeTakeFirstOrThrow();
      await tx
        .insertInto('job_events')
        .values({ job_id: jobId, attempt: row.attempt + 1, state: again, host_id: null, detail: 'requeued: never started' })
        .execute();
    } else {
      updated = await tx
        .updateTable('jobs')
        .set({ state: lost, finished_at: sql`now()`, error_code: 'job.lost', error_message: reason })
        .where('id', '=', jobId)
        .returningAll()
        .executeTakeFirstOrThrow();
    }
    return { job: jobFromRow(updated), from, requeued: requeue };
  });
}

export interface ActiveJobRef {
  id: number;
  attempt: number;
  hostId: number;
  state: JobState;
  cpus: number;
  memoryBytes: number;
  diskBytes: number;
  cancelRequested: boolean;
  tenant: string;
}

export async function activeJobsOnHosts(db: Q, hostIds: number[]): Promise<ActiveJobRef[]> {
  if (hostIds.length === 0) return [];
  const rows = await db
    .selectFrom('jobs')
    .select(['id', 'attempt', 'host_id', 'state', 'cpus', 'memory_bytes', 'disk_bytes', 'cancel_requested', 'tenant'])
    .where('state', 'in', [...ACTIVE_STATES])
    .where(idIn('host_id', hostIds))
    .execute();
  return rows.map((r) => ({
    id: r.id,
    attempt: r.attempt,
    hostId: r.host_id ?? 0,
    state: r.state as JobState,
    cpus: r.cpus,
    memoryBytes: r.memory_bytes,
    diskBytes: r.disk_bytes,
    cancelRequested: r.cancel_requested,
    tenant: r.tenant,
  }));
}

/**
 * Cancels a job. The state machine says which states accept a cancel; of those, a job that holds no host yet
 * (queued) becomes cancelled at once, and an active one is flagged so the replica that owns its host stops
 * the VM (the agent's result then settles it as cancelled). `from` is the state the job was in.
 */
export async function requestCancel(db: Db, jobId: number): Promise<{ job: Job; from: JobState; stopHost: number | null } | undefined> {
  const cancel: JobEvent = { type: 'cancel' };
  return db.transaction().execute(async (tx) => {
    const row = await tx.selectFrom('jobs').selectAll().where('id', '=', jobId).forUpdate().executeTakeFirst();
    if (!row) return undefined;
    const from = row.state as JobState;
    if (!canTransition(from, cancel)) return { job: jobFromRow(row), from, stopHost: null };
    if (holdsHost(from)) {
      const updated = await tx.updateTable('jobs').set({ cancel_requested: true }).where('id', '=', jobId).returningAll().executeTakeFirstOrThrow();
      return { job: jobFromRow(updated), from, stopHost: row.host_id };
    }
    const to = nextJobState(from, cancel);
    const updated = await tx
      .updateTable('jobs')
      .set({ state: to, finished_at: sql`now()`, cancel_requested: true })
      .where('id', '=', jobId)
      .returningAll()
      .executeTakeFirstOrThrow();
    await tx
      .insertInto('job_events')
      .values({ job_id: jobId, attempt: row.attempt, state: to, host_id: null, detail: 'cancelled before placement' })
      .execute();
    return { job: jobFromRow(updated), from, stopHost: null };
  });
}

/**
 * Removes one key from a job's env (a credential the job no longer needs: a GitHub runner's JIT config once
 * the runner used it or never will). No state change.
 */
export async function removeJobEnv(q: Q, jobId: number, key: string): Promise<void> {
  await sql`UPDATE jobs SET env = env - ${key}::text WHERE id = ${jobId}`.execute(q);
}

/** Active jobs past their deadline (timeout from placement, plus grace for the agent to report first). */
export async function overdueJobs(db: Q, graceMs: number, limit = 500): Promise<ActiveJobRef[]> {
  const r = await sql<JobRow>`
    SELECT * FROM jobs WHERE state IN ('placed','booting','running')
      AND placed_at + make_interval(secs => (timeout_ms + ${graceMs})::double precision / 1000) < now()
    ORDER BY id LIMIT ${limit}`.execute(db);
  return r.rows.map((x) => ({
    id: x.id,
    attempt: x.attempt,
    hostId: x.host_id ?? 0,
    state: x.state as JobState,
    cpus: x.cpus,
    memoryBytes: x.memory_bytes,
    diskBytes: x.disk_bytes,
    cancelRequested: x.cancel_requested,
    tenant: x.tenant,
  }));
}

export interface PhaseUpdate {
  jobId: number;
  attempt: number;
  hostId: number;
  phase: 'booting' | 'running';
  /** With `running`: how the VM came up, kept as the running event's detail ("warm start, ready in 812 ms"). */
  start?: 'warm' | 'cold';
  bootMs?: number;
}

/** The running event's detail for a VM that came up warm or cold: `warm start, ready in 812 ms`. */
export function startDetail(u: Pick<PhaseUpdate, 'start' | 'bootMs'>): string | null {
  if (!u.start) return null;
  return `${u.start} start${u.bootMs !== undefined ? `, ready in ${Math.round(u.bootMs)} ms` : ''}`;
}

/** Reads `startDetail` back: how the attempt's VM came up, or null when the agent did not say. */
export function startOfDetail(detail: string | null): 'warm' | 'cold' | null {
  const m = /^(warm|cold) start\b/.exec(detail ?? '');
  return m ? (m[1] as 'warm' | 'cold') : null;
}

export interface PhaseChange {
  id: number;
  tenant: string;
  attempt: number;
  state: 'booting' | 'running';
  /** The state it left (for a job that booted and started in one batch: placed, with `booted` set). */
  from: JobState;
  /** Both transitions happened in this batch: placed → booting → running. */
  booted: boolean;
  /** For a start: what the wait/boot figures need, returned by the update itself (no read after it). */
  started?: StartedTimes;
}

/**
 * Applies many agent phase reports in one statement (they are the most frequent writes). Per job only the
 * latest phase counts; a job that booted and started within one batch gets both transitions recorded.
 * Legal source states come from the pure state machine. Returns the jobs that changed, slimmed to what
 * their events carry.
 */
export async function applyPhases(db: Q, updates: PhaseUpdate[]): Promise<PhaseChange[]> {
  if (updates.length === 0) return [];
  const latest = new Map<number, PhaseUpdate & { booted: boolean }>();
  for (const u of updates) {
    const prev = latest.get(u.jobId);
    if (prev && prev.attempt === u.attempt && prev.phase === 'running') continue;
    latest.set(u.jobId, { ...u, booted: prev?.attempt === u.attempt && prev.phase === 'booting' && u.phase === 'running' });
  }
  const batch = batchRows(
    'v',
    [['id', 'bigint'], ['attempt', 'int'], ['host', 'bigint'], ['phase', 'text'], ['booted', 'boolean'], ['detail', 'text']],
    // In job-id order: two of these statements at once (the phase writer allows it on PostgreSQL) then lock
    // their rows in the same order with the usual plan (a nested loop over v).
    [...latest.values()]
      .sort((a, b) => a.jobId - b.jobId)
      .map((u) => ({ id: u.jobId, attempt: u.attempt, host: u.hostId, phase: u.phase, booted: u.booted, detail: u.phase === 'running' ? startDetail(u) : null })),
  );
  const bootFrom = statesAccepting({ type: 'boot' });
  const startFrom = statesAccepting({ type: 'start' });
  const r = await sql<
    Pick<JobRow, 'id' | 'tenant' | 'attempt'> & {
      state: 'booting' | 'running';
      booted: boolean;
      was_booting: boolean;
      arch: string | null;
      labels: string[] | null;
      created_ms: number | null;
      placed_ms: number | null;
      running_ms: number | null;
    }
  >`
    WITH v AS (
      SELECT * FROM ${batch}
    ), upd AS (
      UPDATE jobs j SET
        state = v.phase,
        booting_at = CASE WHEN v.phase = 'booting' OR v.booted THEN now() ELSE j.booting_at END,
        running_at = CASE WHEN v.phase = 'running' THEN now() ELSE j.running_at END
      FROM v
      WHERE j.id = v.id AND j.attempt = v.attempt AND j.host_id = v.host
        AND ((v.phase = 'booting' AND j.state = ANY(${sql.val(bootFrom)}::text[])) OR (v.phase = 'running' AND j.state = ANY(${sql.val(startFrom)}::text[])))
      RETURNING j.id, j.tenant, j.attempt, j.state, j.host_id, v.booted, v.detail, (v.phase = 'running' AND j.booting_at IS NOT NULL AND NOT v.booted) AS was_booting,
        CASE WHEN v.phase = 'running' THEN j.arch END AS arch, CASE WHEN v.phase = 'running' THEN j.labels END AS labels,
        CASE WHEN v.phase = 'running' THEN (extract(epoch FROM j.created_at) * 1000)::float8 END AS created_ms,
        CASE WHEN v.phase = 'running' THEN (extract(epoch FROM j.placed_at) * 1000)::float8 END AS placed_ms,
        CASE WHEN v.phase = 'running' THEN (extract(epoch FROM j.running_at) * 1000)::float8 END AS running_ms
    ), ev AS (
      INSERT INTO job_events (job_id, attempt, state, host_id, detail)
      SELECT id, attempt, 'booting', host_id, NULL FROM upd WHERE booted
      UNION ALL
      SELECT id, attempt, state, host_id, detail FROM upd
    )
    SELECT id, tenant, attempt, state, booted, was_booting, arch, labels, created_ms, placed_ms, running_ms FROM upd`.execute(db);
  // Only what the events and the figures need: reading back whole rows (env, command) cost more than the
  // update, and reading the times again after it (as the figures did) cost a statement per batch. Times come
  // back as epoch milliseconds (a number, not a timestamp string to parse).
  return r.rows.map((x) => ({
    id: x.id,
    tenant: x.tenant,
    attempt: x.attempt,
    state: x.state,
    from: x.was_booting ? 'booting' : 'placed',
    booted: x.booted,
    ...(x.state === 'running' && x.arch !== null && x.created_ms !== null && x.running_ms !== null
      ? { started: { arch: x.arch, labels: x.labels ?? [], createdAt: new Date(x.created_ms), placedAt: x.placed_ms === null ? null : new Date(x.placed_ms), runningAt: new Date(x.running_ms) } }
      : {}),
  }));
}

export interface TransitionRequest {
  jobId: number;
  attempt: number;
  /** Decides the event from the job as stored (undefined: no change). */
  choose(current: Job): { event: JobEvent; fields?: TransitionFields } | undefined;
}

export interface ExitRequest {
  jobId: number;
  attempt: number;
  /** The host the result came from: the job must still be placed there. */
  hostId: number;
  exitCode: number;
}

export interface ExitChange {
  job: Pick<Job, 'id' | 'tenant' | 'attempt' | 'state' | 'exitCode'>;
  from: JobState;
}

/**
 * Records VMs that exited, in one statement with no read first (the usual end of a job: `transitionJobs`
 * needs a read because other results depend on the stored job). An exit's target state does not depend on
 * the state it leaves (the pure state machine says so for every state that accepts it, checked here), so
 * the update only needs the accepting states; the state left is read from the row as it was. Results in
 * request order (undefined: no change: a stale attempt, another host, or a job already finished).
 */
export async function recordExits(db: Q, reqs: ExitRequest[]): Promise<(ExitChange | undefined)[]> {
  if (reqs.length === 0) return [];
  // Every exit is accepted from the same states (the active ones), and leads from each to one state.
  const accepting = statesAccepting({ type: 'exit', exitCode: 0 });
  const rows = reqs.map((q) => {
    const event: JobEvent = { type: 'exit', exitCode: q.exitCode };
    const targets = new Set(statesAccepting(event).map((s) => nextJobState(s, event)));
    const to = [...targets][0];
    if (targets.size !== 1 || !to || STATE_TIME[to] !== 'finished_at' || statesAccepting(event).join() !== accepting.join()) {
      throw new Error(`exit ${q.exitCode} does not lead to one final state from the same states (${[...targets].join(', ')})`);
    }
    return { id: q.jobId, attempt: q.attempt, host: q.hostId, exit_code: q.exitCode, to };
  });
  const batch = batchRows('v', [['id', 'bigint'], ['attempt', 'int'], ['host', 'bigint'], ['exit_code', 'int'], ['to', 'text']], rows);
  const r = await sql<Pick<JobRow, 'id' | 'tenant' | 'attempt' | 'state' | 'host_id' | 'exit_code'> & { from_state: string }>`
    WITH v AS (
      SELECT * FROM ${batch}
    ), upd AS (
      UPDATE jobs SET state = v."to", finished_at = now(), exit_code = v.exit_code
      FROM v JOIN jobs old ON old.id = v.id
      WHERE jobs.id = v.id AND jobs.attempt = v.attempt AND jobs.host_id = v.host AND jobs.state = ANY(${sql.val(accepting)}::text[])
      RETURNING jobs.id, jobs.tenant, jobs.attempt, jobs.state, jobs.host_id, jobs.exit_code, old.state AS from_state
    ), ev AS (
      INSERT INTO job_events (job_id, attempt, state, host_id) SELECT id, attempt, state, host_id FROM upd
    )
    SELECT id, tenant, attempt, state, host_id, exit_code, from_state FROM upd`.execute(db);
  const done = new Map(r.rows.map((x) => [x.id, x]));
  // A job updates once however often it is named: the first request that matches it gets the change.
  return reqs.map((q) => {
    const x = done.get(q.jobId);
    if (!x || x.attempt !== q.attempt || x.host_id !== q.hostId) return undefined;
    done.delete(q.jobId);
    return { job: { id: x.id, tenant: x.tenant, attempt: x.attempt, state: x.state as JobState, exitCode: x.exit_code }, from: x.from_state as JobState };
  });
}

const TRANSITION_COLUMNS: BatchColumn[] = [
  ['id', 'bigint'],
  ['attempt', 'int'],
  ['from', 'text'],
  ['cancel', 'boolean'],
  ['to', 'text'],
  ['col', 'text'],
  ['exit_code', 'int'],
  ['error_code', 'text'],
  ['error_message', 'text'],
  ['detail', 'text'],
];

/**
 * Many transitions in two statements: one read, then one optimistic update (each row only if still in the
 * state read) that also records the transitions. Decisions stay in the pure state machine; a row that
 * changed meanwhile falls back to `transitionJob`. Results are in request order (undefined: no change).
 */
export async function transitionJobs(db: Db, reqs: TransitionRequest[]): Promise<({ job: Job; from: JobState } | undefined)[]> {
  if (reqs.length === 0) return [];
  const rows = new Map<number, JobRow>();
  for (let i = 0; i < reqs.length; i += 5000) {
    for (const r of await db.selectFrom('jobs').selectAll().where(idIn('id', reqs.slice(i, i + 5000).map((x) => x.jobId))).execute()) rows.set(r.id, r);
  }
  const planned: { req: TransitionRequest; from: JobState; rec: Record<string, unknown> }[] = [];
  const out: ({ job: Job; from: JobState } | undefined)[] = reqs.map(() => undefined);
  const index = new Map<TransitionRequest, number>(reqs.map((r, i) => [r, i]));
  const seen = new Set<number>();
  for (const req of reqs) {
    const row = rows.get(req.jobId);
    if (!row || row.attempt !== req.attempt || seen.has(req.jobId)) continue;
    const chosen = req.choose(jobFromRow(row));
    if (!chosen) continue;
    const from = row.state as JobState;
    if (!canTransition(from, chosen.event)) continue;
    seen.add(req.jobId);
    const to = nextJobState(from, chosen.event);
    const f = chosen.fields ?? {};
    planned.push({
      req,
      from,
      rec: {
        id: req.jobId,
        attempt: req.attempt,
        from,
        cancel: row.cancel_requested,
        to,
        col: STATE_TIME[to] ?? null,
        exit_code: f.exitCode ?? null,
        error_code: f.error?.code ?? null,
        error_message: f.error?.message.slice(0, 4000) ?? null,
        detail: f.detail ?? null,
      },
    });
  }
  if (planned.length > 0) {
    const batch = batchRows('v', TRANSITION_COLUMNS, planned.map((p) => p.rec));
    // What the update set, plus what other writers change meanwhile without a state change (log sizes); the
    // rest is the row as read (its job spec; env is only ever scrubbed of a GitHub runner's config).
    type Changed = Pick<JobRow, 'id' | 'state' | 'placed_at' | 'booting_at' | 'running_at' | 'finished_at' | 'exit_code' | 'error_code' | 'error_message' | 'log_bytes' | 'log_truncated'>;
    const r = await sql<Changed & { from_state: string }>`
      WITH v AS (
        SELECT * FROM ${batch}
      ), upd AS (
        UPDATE jobs SET
          state = v."to",
          placed_at = CASE WHEN v.col = 'placed_at' THEN now() ELSE jobs.placed_at END,
          booting_at = CASE WHEN v.col = 'booting_at' THEN now() ELSE jobs.booting_at END,
          running_at = CASE WHEN v.col = 'running_at' THEN now() ELSE jobs.running_at END,
          finished_at = CASE WHEN v.col = 'finished_at' THEN now() ELSE jobs.finished_at END,
          exit_code = coalesce(v.exit_code, jobs.exit_code),
          error_code = coalesce(v.error_code, jobs.error_code),
          error_message = coalesce(v.error_message, jobs.error_message)
        FROM v
        WHERE jobs.id = v.id AND jobs.attempt = v.attempt AND jobs.state = v."from" AND jobs.cancel_requested = v.cancel
        RETURNING jobs.id, jobs.attempt, jobs.state, jobs.host_id, jobs.placed_at, jobs.booting_at, jobs.running_at, jobs.finished_at, jobs.exit_code,
          jobs.error_code, jobs.error_message, jobs.log_bytes, jobs.log_truncated, v."from" AS from_state, v.detail AS detail
      ), ev AS (
        INSERT INTO job_events (job_id, attempt, state, host_id, detail) SELECT id, attempt, state, host_id, detail FROM upd
      )
      SELECT id, state, placed_at, booting_at, running_at, finished_at, exit_code, error_code, error_message, log_bytes, log_truncated, from_state FROM upd`.execute(db);
    const done = new Map(r.rows.map((x) => [x.id, x]));
    for (const p of planned) {
      const changed = done.get(p.req.jobId);
      const i = index.get(p.req)!;
      // The row as read, with what the update changed (reading whole rows back costs more than the update).
      if (changed) out[i] = { job: jobFromRow({ ...rows.get(p.req.jobId)!, ...changed }), from: changed.from_state as JobState };
      else out[i] = await transitionJob(db, p.req.jobId, p.req.attempt, p.req.choose);
    }
  }
  return out;
}

/** Records what happened to a job's cache (its result's outcome), for the attempt that reported it. */
export async function setCacheOutcome(db: Q, jobId: number, attempt: number, outcome: CacheOutcomeMsg): Promise<void> {
  await db.updateTable('jobs').set({ cache_outcome: JSON.stringify(outcome) }).where('id', '=', jobId).where('attempt', '=', attempt).execute();
}

/** A committed cache version as the server knows it: the job that committed it, its checksum, and who it was (from the server's own rows). */
export interface CommittedCacheVersion {
  jobId: number;
  sha256: string;
  /** The ref, commit and writer the server gave the committing job (its cache spec), never a host's word. */
  ref?: string;
  commit?: string;
  by?: string;
}

/**
 * Records the server's answer to a job's cache.ask for `attempt` (before the agent hears it). A stored "yes"
 * holds: a repeated ask (a resend after a reconnect) gets it back, so a later "no" never takes back a "yes" the
 * agent may already have committed on. A stored "no" may be replaced (the agent asks again only when it never
 * heard the answer, and only a stored "yes" vouches for a commit).
 * Returns the answer in force for that attempt, or undefined when `attempt` is not the job's current one.
 */
export async function setCacheAnswer(db: Q, jobId: number, attempt: number, answer: { write: boolean; ref?: string; commit?: string; reason?: string }): Promise<CacheAnswerRow | undefined> {
  const row: CacheAnswerRow = { attempt, write: answer.write, at: new Date().toISOString(), ...(answer.ref ? { ref: answer.ref } : {}), ...(answer.commit ? { commit: answer.commit } : {}), ...(answer.reason ? { reason: answer.reason } : {}) };
  const r = await db
    .updateTable('jobs')
    .set({ cache_answer: JSON.stringify(row) })
    .where('id', '=', jobId)
    .where('attempt', '=', attempt)
    .where(sql<boolean>`(cache_answer->>'attempt' IS DISTINCT FROM ${String(attempt)} OR cache_answer->>'write' IS DISTINCT FROM 'true')`)
    .executeTakeFirst();
  if (Number(r.numUpdatedRows) > 0) return row;
  const held = await db.selectFrom('jobs').select('cache_answer').where('id', '=', jobId).where('attempt', '=', attempt).executeTakeFirst();
  const a = typeof held?.cache_answer === 'string' ? (JSON.parse(held.cache_answer) as CacheAnswerRow) : held?.cache_answer;
  return a && a.attempt === attempt ? a : undefined;
}

/**
 * A committed cache version as the job that committed it reported it: its checksum and that job, if a job of
 * `tenant` with cache `key` committed `version` (the relay fetches nothing else from a peer). Only a job that
 * could write counts (write true, or 'ask' when the server's own stored answer for that attempt was yes),
 * never a read-only one nor an 'ask' job the server refused or never answered, whatever its host reports; of
 * several claiming one version, the first submitted. The writer record is the server's: `by` from the job's
 * cache spec, ref and commit from the spec (write true) or from the server's answer ('ask').
 */
export async function committedCacheVersion(db: Q, tenant: string, key: string, version: string): Promise<CommittedCacheVersion | undefined> {
  const r = await sql<{ id: string | number; sha: string | null; ref: string | null; commit: string | null; by: string | null }>`
    SELECT id, cache_outcome->'committed'->>'sha256' AS sha, cache->>'by' AS by,
      CASE WHEN cache->>'write' = 'ask' THEN cache_answer->>'ref' ELSE cache->>'ref' END AS ref,
      CASE WHEN cache->>'write' = 'ask' THEN cache_answer->>'commit' ELSE cache->>'commit' END AS commit
    FROM jobs
    WHERE cache_outcome ? 'committed' AND (cache_outcome->'committed'->>'id') = ${version} AND tenant = ${tenant} AND cache->>'key' = ${key}
      AND (cache->>'write' = 'true'
        OR (cache->>'write' = 'ask' AND cache_answer->>'write' = 'true' AND cache_answer->>'attempt' = attempt::text))
    ORDER BY id
    LIMIT 1`.execute(db);
  const x = r.rows[0];
  if (!x?.sha) return undefined;
  return { jobId: Number(x.id), sha256: x.sha, ...(x.ref ? { ref: x.ref } : {}), ...(x.commit ? { commit: x.commit } : {}), ...(x.by ? { by: x.by } : {}) };
}
