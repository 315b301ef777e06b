/**
 * GitHub jobs kiln has seen (one record per job attempt, with kiln's decision) and their usage records.
 * Callers see `GhJob` and `GhUsage`, never rows.
 */
import { sql } from 'kysely';
import type { GhDecision, GhJobState } from '../core/github-job-state.ts';
import type { GitHubJobRow, GitHubUsageRow } from './github-schema.ts';
import type { Db, Tx } from './store.ts';

type Q = Db | Tx;

/** A job attempt: GitHub's job id and the run attempt. */
export interface GhJobKey {
  jobId: number;
  runAttempt: number;
}

export interface GhJob extends GhJobKey {
  runId: number;
  /** `owner/name`. */
  repo: string;
  owner: string;
  ownerType: string;
  private: boolean;
  installationId: number | null;
  labels: string[];
  /** Runners with this key can serve the job (scope and label set); null when kiln does not serve it. */
  demandKey: string | null;
  state: GhJobState;
  decision: GhDecision;
  reasonCode: string | null;
  reason: string | null;
  /** Last time kiln read the job from GitHub (ms), or null. */
  checkedAt: number | null;
  /** Runners that ended before taking the job. */
  failures: number;
  /** No new runner before this time (ms; backoff after a failure), or null. */
  nextAttemptAt: number | null;
  runnerName: string | null;
  conclusion: string | null;
  workflow: string | null;
  headBranch: string | null;
  sender: string | null;
  org: string | null;
  queuedAt: string | null;
  startedAt: string | null;
  completedAt: string | null;
  createdAt: number;
}

export type NewGhJob = Omit<GhJob, 'checkedAt' | 'failures' | 'nextAttemptAt' | 'createdAt' | 'runnerName' | 'conclusion' | 'queuedAt' | 'startedAt' | 'completedAt'> &
  Partial<Pick<GhJob, 'runnerName' | 'conclusion' | 'queuedAt' | 'startedAt' | 'completedAt'>>;

export interface GhJobPatch {
  state?: GhJobState;
  decision?: GhDecision;
  reasonCode?: string | null;
  reason?: string | null;
  checkedAt?: number;
  failures?: number;
  nextAttemptAt?: number | null;
  installationId?: number;
  runnerName?: string | null;
  conclusion?: string | null;
  queuedAt?: string;
  startedAt?: string;
  completedAt?: string;
  updatedAt?: number;
}

const ms = (x: Date | string | null): number | null => (x === null ? null : new Date(x).getTime());
const iso = (x: Date | string | null): string | null => (x === null ? null : new Date(x).toISOString());
const date = (x: number | null | undefined): Date | null | undefined => (x === undefined ? undefined : x === null ? null : new Date(x));

export function ghJobFromRow(r: GitHubJobRow): GhJob {
  return {
    jobId: r.job_id,
    runAttempt: r.run_attempt,
    runId: r.run_id,
    repo: r.repo,
    owner: r.owner,
    ownerType: r.owner_type,
    private: r.private,
    installationId: r.installation_id,
    labels: r.labels,
    demandKey: r.demand_key,
    state: r.state as GhJobState,
    decision: r.decision as GhDecision,
    reasonCode: r.reason_code,
    reason: r.reason,
    checkedAt: ms(r.checked_at),
    failures: r.failures,
    nextAttemptAt: ms(r.next_attempt_at),
    runnerName: r.runner_name,
    conclusion: r.conclusion,
    workflow: r.workflow,
    headBranch: r.head_branch,
    sender: r.sender,
    org: r.org,
    queuedAt: iso(r.queued_at),
    startedAt: iso(r.started_at),
    completedAt: iso(r.completed_at),
    createdAt: ms(r.created_at) ?? 0,
  };
}

function patchRow(p: GhJobPatch): Record<string, unknown> {
  const o: Record<string, unknown> = {};
  const put = (k: string, v: unknown) => {
    if (v !== undefined) o[k] = v;
  };
  put('state', p.state);
  put('decision', p.decision);
  put('reason_code', p.reasonCode);
  put('reason', p.reason);
  put('checked_at', date(p.checkedAt));
  put('failures', p.failures);
  put('next_attempt_at', date(p.nextAttemptAt));
  put('installation_id', p.installationId);
  put('runner_name', p.runnerName);
  put('conclusion', p.conclusion);
  put('queued_at', p.queuedAt);
  put('started_at', p.startedAt);
  put('completed_at', p.completedAt);
  put('updated_at', date(p.updatedAt));
  return o;
}

/** The job attempt, locked for the rest of the transaction. */
export async function getGhJobForUpdate(tx: Tx, k: GhJobKey): Promise<GhJob | undefined> {
  const r = await tx.selectFrom('github_jobs').selectAll().where('job_id', '=', k.jobId).where('run_attempt', '=', k.runAttempt).forUpdate().executeTakeFirst();
  return r && ghJobFromRow(r);
}

export async function getGhJob(db: Q, k: GhJobKey): Promise<GhJob | undefined> {
  const r = await db.selectFrom('github_jobs').selectAll().where('job_id', '=', k.jobId).where('run_attempt', '=', k.runAttempt).executeTakeFirst();
  return r && ghJobFromRow(r);
}

export async function insertGhJob(tx: Q, j: NewGhJob): Promise<GhJob> {
  const r = await tx
    .insertInto('github_jobs')
    .values({
      job_id: j.jobId,
      run_attempt: j.runAttempt,
      run_id: j.runId,
      repo: j.repo,
      owner: j.owner,
      owner_type: j.ownerType,
      private: j.private,
      installation_id: j.installationId,
      labels: JSON.stringify(j.labels),
      demand_key: j.demandKey,
      state: j.state,
      decision: j.decision,
      reason_code: j.reasonCode,
      reason: j.reason,
      workflow: j.workflow,
      head_branch: j.headBranch,
      sender: j.sender,
      org: j.org,
      runner_name: j.runnerName ?? null,
      conclusion: j.conclusion ?? null,
      queued_at: j.queuedAt ?? null,
      started_at: j.startedAt ?? null,
      completed_at: j.completedAt ?? null,
    })
    .returningAll()
    .executeTakeFirstOrThrow();
  return ghJobFromRow(r);
}

/** Applies `p` to the job attempt; returns it as it is now (undefined when there is no such job). */
export async function updateGhJob(db: Q, k: GhJobKey, p: GhJobPatch): Promise<GhJob | undefined> {
  const set = patchRow(p);
  if (Object.keys(set).length === 0) return getGhJob(db, k);
  const r = await db.updateTable('github_jobs').set(set).where('job_id', '=', k.jobId).where('run_attempt', '=', k.runAttempt).returningAll().executeTakeFirst();
  return r && ghJobFromRow(r);
}

/** Queued jobs kiln has not decided on yet and has not read from GitHub since `checkedBefore`. */
export async function listUndecided(db: Q, checkedBefore: number, limit: number): Promise<GhJob[]> {
  const rows = await db
    .selectFrom('github_jobs')
    .selectAll()
    .where('state', '=', 'queued')
    .where('decision', '=', 'pending')
    .where((w) => w.or([w('checked_at', 'is', null), w('checked_at', '<', new Date(checkedBefore))]))
    .orderBy('created_at')
    .limit(limit)
    .execute();
  return rows.map(ghJobFromRow);
}

/** Accepted jobs still queued on GitHub as far as kiln knows: the demand for runners, oldest first. */
export async function listQueuedAccepted(db: Q): Promise<GhJob[]> {
  const rows = await db.selectFrom('github_jobs').selectAll().where('state', '=', 'queued').where('decision', '=', 'accepted').orderBy('created_at').execute();
  return rows.map(ghJobFromRow);
}

/**
 * The newest accepted job of each demand key seen since `since` (ms): the label sets kiln keeps spare runners
 * for, and what such a runner is registered as (scope, installation, labels).
 */
export async function recentDemandKeys(db: Q, since: number): Promise<GhJob[]> {
  const rows = await db
    .selectFrom('github_jobs')
    .selectAll()
    .distinctOn('demand_key')
    .where('decision', '=', 'accepted')
    .where('demand_key', 'is not', null)
    .where('created_at', '>', new Date(since))
    .orderBy('demand_key')
    .orderBy('created_at', 'desc')
    .execute();
  return rows.map(ghJobFromRow);
}

/**
 * Accepted queued jobs of one demand key not read from GitHub since `checkedBefore` (ms), oldest first: the
 * ones the reconciler re-reads when it doubts the key's queue (lost or late webhooks).
 */
export async function listQueuedOfKey(db: Q, demandKey: string, checkedBefore: number, limit: number): Promise<GhJob[]> {
  const rows = await db
    .selectFrom('github_jobs')
    .selectAll()
    .where('state', '=', 'queued')
    .where('decision', '=', 'accepted')
    .where('demand_key', '=', demandKey)
    .where((w) => w.or([w('checked_at', 'is', null), w('checked_at', '<', new Date(checkedBefore))]))
    .orderBy('created_at')
    .limit(limit)
    .execute();
  return rows.map(ghJobFromRow);
}

export async function listGhJobs(db: Q, f: { decision?: string | undefined; repo?: string | undefined; limit: number }): Promise<GhJob[]> {
  let s = db.selectFrom('github_jobs').selectAll().orderBy('created_at', 'desc').limit(f.limit);
  if (f.decision) s = s.where('decision', '=', f.decision);
  if (f.repo) s = s.where('repo', '=', f.repo);
  return (await s.execute()).map(ghJobFromRow);
}

export async function countGhJobsByDecisionAndState(db: Q): Promise<{ decision: string; state: string; n: number }[]> {
  const rows = await db
    .selectFrom('github_jobs')
    .select((e) => ['decision', 'state', e.fn.countAll<string>().as('n')])
    .groupBy(['decision', 'state'])
    .execute();
  return rows.map((r) => ({ decision: r.decision, state: r.state, n: Number(r.n) }));
}

// ---- usage records -----------------------------------------------------------------------------------

/** What one GitHub job cost: who asked, what ran it, when. */
export interface GhUsage extends GhJobKey {
  repo: string;
  org: string | null;
  sender: string | null;
  labels: string[];
  workflow: string | null;
  runnerName: string | null;
  kilnJobId: number | null;
  hostId: number | null;
  cpus: number | null;
  memoryBytes: number | null;
  conclusion: string | null;
  queuedAt: string | null;
  startedAt: string | null;
  completedAt: string | null;
}

export type GhUsagePatch = Partial<Pick<GhUsage, 'runnerName' | 'kilnJobId' | 'hostId' | 'cpus' | 'memoryBytes' | 'conclusion' | 'queuedAt' | 'startedAt' | 'completedAt'>>;

function usageFromRow(u: GitHubUsageRow): GhUsage {
  return {
    jobId: u.job_id,
    runAttempt: u.run_attempt,
    repo: u.repo,
    org: u.org,
    sender: u.sender,
    labels: u.labels,
    workflow: u.workflow,
    runnerName: u.runner_name,
    kilnJobId: u.kiln_job_id,
    hostId: u.host_id,
    cpus: u.cpus,
    memoryBytes: u.memory_bytes,
    conclusion: u.conclusion,
    queuedAt: iso(u.queued_at),
    startedAt: iso(u.started_at),
    completedAt: iso(u.completed_at),
  };
}

function usagePatchRow(p: GhUsagePatch): Record<string, unknown> {
  const o: Record<string, unknown> = {};
  const map: [keyof GhUsagePatch, string][] = [
    ['runnerName', 'runner_name'],
    ['kilnJobId', 'kiln_job_id'],
    ['hostId', 'host_id'],
    ['cpus', 'cpus'],
    ['memoryBytes', 'memory_bytes'],
    ['conclusion', 'conclusion'],
    ['queuedAt', 'queued_at'],
    ['startedAt', 'started_at'],
    ['completedAt', 'completed_at'],
  ];
  for (const [k, col] of map) if (p[k] !== undefined) o[col] = p[k];
  return o;
}

/** Opens the usage record of a job attempt (a second open is a no-op). */
export async function openUsage(db: Q, u: Pick<GhUsage, 'jobId' | 'runAttempt' | 'repo' | 'org' | 'sender' | 'labels' | 'workflow'> & GhUsagePatch): Promise<void> {
  await db
    .insertInto('github_usage')
    .values({ job_id: u.jobId, run_attempt: u.runAttempt, repo: u.repo, org: u.org, sender: u.sender, labels: JSON.stringify(u.labels), workflow: u.workflow, ...usagePatchRow(u) })
    .onConflict((oc) => oc.columns(['job_id', 'run_attempt']).doNothing())
    .execute();
}

/**
 * Fills the usage record: only fields still empty are written, so deliveries and re-reads in any order
 * (and twice) converge on the same record.
 */
export async function fillUsage(db: Q, k: GhJobKey, p: GhUsagePatch): Promise<void> {
  const set: Record<string, unknown> = {};
  for (const [col, v] of Object.entries(usagePatchRow(p))) if (v !== null) set[col] = sql`coalesce(${sql.ref(col)}, ${v})`;
  if (Object.keys(set).length === 0) return;
  await db.updateTable('github_usage').set(set).where('job_id', '=', k.jobId).where('run_attempt', '=', k.runAttempt).execute();
}

export async function getUsage(db: Q, k: GhJobKey): Promise<GhUsage | undefined> {
  const r = await db.selectFrom('github_usage').selectAll().where('job_id', '=', k.jobId).where('run_attempt', '=', k.runAttempt).executeTakeFirst();
  return r && usageFromRow(r);
}

export async function listUsage(db: Q, f: { repo?: string | undefined; org?: string | undefined; limit: number }): Promise<GhUsage[]> {
  let s = db.selectFrom('github_usage').selectAll().orderBy('queued_at', 'desc').limit(f.limit);
  if (f.repo) s = s.where('repo', '=', f.repo);
  if (f.org) s = s.where('org', '=', f.org);
  return (await s.execute()).map(usageFromRow);
}
