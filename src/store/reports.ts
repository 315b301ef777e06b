/**
 * Read-only queries behind the reports API and the dashboard: job times (wait, boot, run), usage over
 * time by a dimension, slowest and most failing jobs, the queue. Aggregation happens in SQL so a month of
 * jobs never crosses into JavaScript row by row.
 */
import type { CacheOutcomeMsg } from '../core/agent-protocol.ts';
import { sql } from 'kysely';
import type { Db, Tx } from './store.ts';
import { idIn } from './id-list.ts';

type Q = Db | Tx;

/** `AND <col> = tenant` when a report is confined to one tenant (a non-admin token's), else nothing. */
const tenantIs = (tenant: string | undefined, col = 'j.tenant') => (tenant === undefined ? sql`` : sql`AND ${sql.ref(col)} = ${tenant}`);

export interface JobTimesRow {
  id: number;
  arch: string;
  labels: string[];
  createdAt: Date;
  placedAt: Date | null;
  runningAt: Date | null;
  finishedAt: Date | null;
}

export async function jobTimesByIds(db: Q, ids: number[]): Promise<JobTimesRow[]> {
  if (ids.length === 0) return [];
  const rows = await db.selectFrom('jobs').select(['id', 'arch', 'labels', 'created_at', 'placed_at', 'running_at', 'finished_at']).where(idIn('id', ids)).execute();
  return rows.map((r) => ({ id: Number(r.id), arch: r.arch, labels: r.labels, createdAt: r.created_at, placedAt: r.placed_at, runningAt: r.running_at, finishedAt: r.finished_at }));
}

export interface TimingGroup {
  arch: string;
  labels: string[];
  count: number;
  wait: { p50: number | null; p95: number | null; p99: number | null };
  boot: { p50: number | null; p95: number | null; p99: number | null };
}

/** Nearest-rank (percentile_disc) wait and boot seconds of the jobs whose command started since `since`. */
export async function timingPercentiles(db: Q, since: Date, tenant?: string): Promise<TimingGroup[]> {
  const r = await sql<{
    arch: string;
    labels: string;
    n: string | number;
    w50: number | null;
    w95: number | null;
    w99: number | null;
    b50: number | null;
    b95: number | null;
    b99: number | null;
  }>`
    WITH t AS (
      SELECT arch, labels::text AS labels,
        GREATEST(0, extract(epoch FROM placed_at - created_at))::float8 AS w,
        GREATEST(0, extract(epoch FROM running_at - placed_at))::float8 AS b
      FROM jobs WHERE running_at >= ${since} AND placed_at IS NOT NULL ${tenantIs(tenant, 'tenant')}
    )
    SELECT arch, labels, count(*) AS n,
      percentile_disc(0.5) WITHIN GROUP (ORDER BY w) AS w50, percentile_disc(0.95) WITHIN GROUP (ORDER BY w) AS w95,
      percentile_disc(0.99) WITHIN GROUP (ORDER BY w) AS w99, percentile_disc(0.5) WITHIN GROUP (ORDER BY b) AS b50,
      percentile_disc(0.95) WITHIN GROUP (ORDER BY b) AS b95, percentile_disc(0.99) WITHIN GROUP (ORDER BY b) AS b99
    FROM t GROUP BY arch, labels ORDER BY count(*) DESC LIMIT 200`.execute(db);
  return r.rows.map((x) => ({
    arch: x.arch,
    labels: JSON.parse(x.labels) as string[],
    count: Number(x.n),
    wait: { p50: x.w50, p95: x.w95, p99: x.w99 },
    boot: { p50: x.b50, p95: x.b95, p99: x.b99 },
  }));
}

export interface PickupGroup {
  labels: string[];
  count: number;
  p50: number | null;
  p95: number | null;
  p99: number | null;
  /**
   * The first part of the pickup: created_at to the runner that took the job coming online (0 when one was
   * already waiting), over the `count` jobs whose runner was kiln's and known; the rest is GitHub assigning it.
   */
  runnerOnline: { count: number; p50: number | null; p95: number | null; p99: number | null };
}

/**
 * GitHub pickup (created_at → in_progress) of the GitHub jobs that started since `since`, and its first part,
 * created_at → runner online (the runner seen online by the reconciler, else its VM starting the runner).
 */
export async function pickupPercentiles(db: Q, since: Date): Promise<PickupGroup[]> {
  type Row = { labels: string; n: string | number; p50: number | null; p95: number | null; p99: number | null; on: string | number; o50: number | null; o95: number | null; o99: number | null };
  const r = await sql<Row>`
    WITH t AS (
      SELECT u.labels::text AS labels, GREATEST(0, extract(epoch FROM u.started_at - u.queued_at))::float8 AS s,
        LEAST(GREATEST(0, extract(epoch FROM u.started_at - u.queued_at)),
          GREATEST(0, extract(epoch FROM COALESCE(r.online_at, j.running_at) - u.queued_at)))::float8 AS o
      FROM github_usage u
      LEFT JOIN github_runners r ON r.name = u.runner_name
      LEFT JOIN jobs j ON j.id = r.kiln_job_id
      WHERE u.started_at >= ${since} AND u.queued_at IS NOT NULL
    )
    SELECT labels, count(*) AS n, percentile_disc(0.5) WITHIN GROUP (ORDER BY s) AS p50,
      percentile_disc(0.95) WITHIN GROUP (ORDER BY s) AS p95, percentile_disc(0.99) WITHIN GROUP (ORDER BY s) AS p99,
      count(o) AS on, percentile_disc(0.5) WITHIN GROUP (ORDER BY o) AS o50,
      percentile_disc(0.95) WITHIN GROUP (ORDER BY o) AS o95, percentile_disc(0.99) WITHIN GROUP (ORDER BY o) AS o99
    FROM t GROUP BY labels ORDER BY count(*) DESC LIMIT 200`.execute(db);
  return r.rows.map((x) => ({
    labels: JSON.parse(x.labels) as string[],
    count: Number(x.n),
    p50: x.p50,
    p95: x.p95,
    p99: x.p99,
    runnerOnline: { count: Number(x.on), p50: x.o50, p95: x.o95, p99: x.o99 },
  }));
}

import { USAGE_DIMENSIONS, type UsageDimension } from '../core/timings.ts';
export { USAGE_DIMENSIONS, type UsageDimension };

/** The SQL value a finished job is counted under, per dimension (GitHub's usage record where there is one). */
function dimensionSql(by: UsageDimension) {
  switch (by) {
    case 'repository':
      return sql<string>`COALESCE(u.repo, '(not from GitHub)')`;
    case 'organization':
      return sql<string>`COALESCE(u.org, '(not from GitHub)')`;
    case 'user':
      return sql<string>`COALESCE(u.sender, t.name, j.tenant)`;
    case 'label':
      return sql<string>`j.labels::text`;
    case 'tenant':
      return sql<string>`j.tenant`;
  }
}

export interface UsagePoint {
  bucket: Date;
  key: string;
  jobs: number;
  failed: number;
  vmMinutes: number;
  waitSeconds: number;
}

/** Finished jobs per time bucket and dimension value: count, failures, VM-minutes (VM start to end), total wait. */
export async function usageSeries(db: Q, o: { since: Date; bucketSeconds: number; by: UsageDimension; tenant?: string }): Promise<UsagePoint[]> {
  const key = dimensionSql(o.by);
  const r = await sql<{ bucket: Date; key: string; jobs: string | number; failed: string | number; vm_minutes: number | null; wait_s: number | null }>`
    SELECT date_bin(make_interval(secs => ${o.bucketSeconds}), j.finished_at, TIMESTAMPTZ '2000-01-01') AS bucket, ${key} AS key,
      count(*) AS jobs, count(*) FILTER (WHERE j.state IN ('failed', 'timed_out', 'lost')) AS failed,
      COALESCE(sum(extract(epoch FROM j.finished_at - COALESCE(j.booting_at, j.running_at))) / 60, 0)::float8 AS vm_minutes,
      COALESCE(sum(extract(epoch FROM j.placed_at - j.created_at)), 0)::float8 AS wait_s
    FROM jobs j
      LEFT JOIN github_usage u ON u.kiln_job_id = j.id
      LEFT JOIN tokens t ON t.id = j.submitted_by
    WHERE j.finished_at >= ${o.since} ${tenantIs(o.tenant)}
    GROUP BY 1, 2 ORDER BY 1, 2`.execute(db);
  return r.rows.map((x) => ({ bucket: new Date(x.bucket), key: x.key, jobs: Number(x.jobs), failed: Number(x.failed), vmMinutes: Number(x.vm_minutes ?? 0), waitSeconds: Number(x.wait_s ?? 0) }));
}

export interface SlowJob {
  id: number;
  tenant: string;
  state: string;
  labels: string[];
  command: string[];
  repo: string | null;
  workflow: string | null;
  runSeconds: number;
  waitSeconds: number;
}

export async function slowestJobs(db: Q, since: Date, limit = 10, tenant?: string): Promise<SlowJob[]> {
  const r = await sql<{ id: string | number; tenant: string; state: string; labels: string[]; command: string[]; repo: string | null; workflow: string | null; run_s: number; wait_s: number }>`
    SELECT j.id, j.tenant, j.state, j.labels, j.command, u.repo, u.workflow,
      extract(epoch FROM j.finished_at - j.running_at)::float8 AS run_s, GREATEST(0, extract(epoch FROM j.placed_at - j.created_at))::float8 AS wait_s
    FROM jobs j LEFT JOIN github_usage u ON u.kiln_job_id = j.id
    WHERE j.finished_at >= ${since} AND j.running_at IS NOT NULL ${tenantIs(tenant)}
    ORDER BY j.finished_at - j.running_at DESC LIMIT ${limit}`.execute(db);
  return r.rows.map((x) => ({ id: Number(x.id), tenant: x.tenant, state: x.state, labels: x.labels, command: x.command, repo: x.repo, workflow: x.workflow, runSeconds: x.run_s, waitSeconds: x.wait_s ?? 0 }));
}

export interface FailingGroup {
  what: string;
  total: number;
  failed: number;
}

/** Which jobs fail most: GitHub jobs by repository and workflow, others by tenant and command. */
export async function mostFailing(db: Q, since: Date, limit = 10, tenant?: string): Promise<FailingGroup[]> {
  const r = await sql<{ what: string; total: string | number; failed: string | number }>`
    SELECT COALESCE(u.repo || ' · ' || COALESCE(u.workflow, '?'), j.tenant || ' · ' || left(j.command::text, 120)) AS what,
      count(*) AS total, count(*) FILTER (WHERE j.state IN ('failed', 'timed_out', 'lost')) AS failed
    FROM jobs j LEFT JOIN github_usage u ON u.kiln_job_id = j.id
    WHERE j.finished_at >= ${since} ${tenantIs(tenant)}
    GROUP BY 1 HAVING count(*) FILTER (WHERE j.state IN ('failed', 'timed_out', 'lost')) > 0
    ORDER BY 3 DESC, 2 DESC LIMIT ${limit}`.execute(db);
  return r.rows.map((x) => ({ what: x.what, total: Number(x.total), failed: Number(x.failed) }));
}

export interface UsageRecord {
  id: number;
  tenant: string;
  state: string;
  arch: string;
  cpus: number;
  memoryBytes: number;
  labels: string[];
  hostId: number | null;
  repo: string | null;
  org: string | null;
  user: string | null;
  workflow: string | null;
  createdAt: Date;
  placedAt: Date | null;
  runningAt: Date | null;
  finishedAt: Date;
  /** The job's cache (host-side key) and what happened to it (migration 0031), when it had one. */
  cacheKey: string | null;
  cacheOutcome: CacheOutcomeMsg | null;
}

/** Finished jobs since `since`, oldest first, in pages by id (for the CSV export). */
export async function usageRecords(db: Q, since: Date, afterId: number, limit: number, tenant?: string): Promise<UsageRecord[]> {
  const r = await sql<{
    id: string | number;
    tenant: string;
    state: string;
    arch: string;
    cpus: number;
    memory_bytes: string | number;
    labels: string[];
    host_id: string | number | null;
    repo: string | null;
    org: string | null;
    sender: string | null;
    token_name: string | null;
    workflow: string | null;
    created_at: Date;
    placed_at: Date | null;
    running_at: Date | null;
    finished_at: Date;
    cache_key: string | null;
    cache_outcome: CacheOutcomeMsg | string | null;
  }>`
    SELECT j.id, j.tenant, j.state, j.arch, j.cpus, j.memory_bytes, j.labels, j.host_id, u.repo, u.org, u.sender, t.name AS token_name, u.workflow,
      j.created_at, j.placed_at, j.running_at, j.finished_at, j.cache->>'key' AS cache_key, j.cache_outcome
    FROM jobs j LEFT JOIN github_usage u ON u.kiln_job_id = j.id LEFT JOIN tokens t ON t.id = j.submitted_by
    WHERE j.finished_at >= ${since} AND j.id > ${afterId} ${tenantIs(tenant)}
    ORDER BY j.id LIMIT ${limit}`.execute(db);
  return r.rows.map((x) => ({
    id: Number(x.id),
    tenant: x.tenant,
    state: x.state,
    arch: x.arch,
    cpus: x.cpus,
    memoryBytes: Number(x.memory_bytes),
    labels: x.labels,
    hostId: x.host_id === null ? null : Number(x.host_id),
    repo: x.repo,
    org: x.org,
    user: x.sender ?? x.token_name,
    workflow: x.workflow,
    createdAt: new Date(x.created_at),
    placedAt: x.placed_at && new Date(x.placed_at),
    runningAt: x.running_at && new Date(x.running_at),
    finishedAt: new Date(x.finished_at),
    cacheKey: x.cache_key,
    cacheOutcome: typeof x.cache_outcome === 'string' ? (JSON.parse(x.cache_outcome) as CacheOutcomeMsg) : x.cache_outcome,
  }));
}

export interface QueuedJob {
  id: number;
  tenant: string;
  arch: string;
  cpus: number;
  memoryBytes: number;
  diskBytes: number;
  hostLabels: string[];
  labels: string[];
  createdAt: Date;
}

/** The oldest queued jobs (the queue page lists these) and the queue's size by label set and tenant. */
export async function queueSnapshot(db: Q, limit: number, tenant?: string): Promise<{ oldest: QueuedJob[]; groups: { tenant: string; labels: string[]; arch: string; count: number; oldest: Date }[] }> {
  let q = db
    .selectFrom('jobs')
    .select(['id', 'tenant', 'arch', 'cpus', 'memory_bytes', 'disk_bytes', 'host_labels', 'labels', 'created_at'])
    .where('state', '=', 'queued');
  if (tenant !== undefined) q = q.where('tenant', '=', tenant);
  const oldest = await q
    .orderBy('id')
    .limit(limit)
    .execute();
  const groups = await sql<{ tenant: string; labels: string; arch: string; n: string | number; oldest: Date }>`
    SELECT tenant, labels::text AS labels, arch, count(*) AS n, min(created_at) AS oldest FROM jobs WHERE state = 'queued' ${tenantIs(tenant, 'tenant')}
    GROUP BY tenant, labels::text, arch ORDER BY count(*) DESC LIMIT 200`.execute(db);
  return {
    oldest: oldest.map((r) => ({
      id: Number(r.id),
      tenant: r.tenant,
      arch: r.arch,
      cpus: r.cpus,
      memoryBytes: Number(r.memory_bytes),
      diskBytes: Number(r.disk_bytes),
      hostLabels: r.host_labels,
      labels: r.labels,
      createdAt: r.created_at,
    })),
    groups: groups.rows.map((g) => ({ tenant: g.tenant, labels: JSON.parse(g.labels) as string[], arch: g.arch, count: Number(g.n), oldest: new Date(g.oldest) })),
  };
}
