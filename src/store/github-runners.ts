/**
 * kiln's JIT runners: one record per registration kiln made (or was about to make), its VM (a kiln job), the
 * GitHub job it was started for and the one it took. Callers see `GhRunner`, never rows; state changes go
 * through the runner state machine (core/runner-state.ts).
 */
import { LIVE_RUNNER_STATES, type RunnerState } from '../core/runner-state.ts';
import type { GhJobKey } from './github-jobs.ts';
import type { GitHubRunnerRow } from './github-schema.ts';
import type { Db, Tx } from './store.ts';

type Q = Db | Tx;

/** Where a runner is registered: a repository or an organization. */
export interface RunnerScope {
  level: 'repo' | 'org';
  owner: string;
  /** Repository name (without owner) for repo-level runners. */
  repo: string | null;
}

export interface GhRunner {
  id: number;
  name: string;
  demandKey: string;
  scope: RunnerScope;
  installationId: number;
  labels: string[];
  /** The job it stands for while it has not taken one (GitHub does not pin runners to jobs). */
  forJob: GhJobKey | null;
  /** GitHub's runner id once registered. */
  runnerId: number | null;
  /** Its VM (a kiln job). */
  kilnJobId: number | null;
  state: RunnerState;
  /** The job it took. */
  job: GhJobKey | null;
  surplusSince: number | null;
  lastError: string | null;
  createdAt: number;
  onlineAt: number | null;
  endedAt: number | null;
}

export interface GhRunnerPatch {
  name?: string;
  state?: RunnerState;
  runnerId?: number;
  kilnJobId?: number;
  forJob?: GhJobKey | null;
  job?: GhJobKey;
  surplusSince?: number | null;
  lastError?: string | null;
  onlineAt?: number;
  endedAt?: number;
}

const ms = (x: Date | string | null): number | null => (x === null ? null : new Date(x).getTime());
const key = (jobId: number | null, runAttempt: number | null): GhJobKey | null => (jobId === null ? null : { jobId, runAttempt: runAttempt ?? 1 });

export function runnerFromRow(r: GitHubRunnerRow): GhRunner {
  return {
    id: r.id,
    name: r.name,
    demandKey: r.demand_key,
    scope: { level: r.scope === 'org' ? 'org' : 'repo', owner: r.owner, repo: r.repo },
    installationId: r.installation_id,
    labels: r.labels,
    forJob: key(r.for_job_id, r.for_run_attempt),
    runnerId: r.runner_id,
    kilnJobId: r.kiln_job_id,
    state: r.state as RunnerState,
    job: key(r.job_id, r.run_attempt),
    surplusSince: ms(r.surplus_since),
    lastError: r.last_error,
    createdAt: ms(r.created_at) ?? 0,
    onlineAt: ms(r.online_at),
    endedAt: ms(r.ended_at),
  };
}

function patchRow(p: GhRunnerPatch): Record<string, unknown> {
  const o: Record<string, unknown> = {};
  if (p.name !== undefined) o.name = p.name;
  if (p.state !== undefined) o.state = p.state;
  if (p.runnerId !== undefined) o.runner_id = p.runnerId;
  if (p.kilnJobId !== undefined) o.kiln_job_id = p.kilnJobId;
  if (p.forJob !== undefined) Object.assign(o, { for_job_id: p.forJob?.jobId ?? null, for_run_attempt: p.forJob?.runAttempt ?? null });
  if (p.job !== undefined) Object.assign(o, { job_id: p.job.jobId, run_attempt: p.job.runAttempt });
  if (p.surplusSince !== undefined) o.surplus_since = p.surplusSince === null ? null : new Date(p.surplusSince);
  if (p.lastError !== undefined) o.last_error = p.lastError;
  if (p.onlineAt !== undefined) o.online_at = new Date(p.onlineAt);
  if (p.endedAt !== undefined) o.ended_at = new Date(p.endedAt);
  return o;
}

export async function insertRunner(
  db: Q,
  r: Pick<GhRunner, 'name' | 'demandKey' | 'scope' | 'installationId' | 'labels' | 'forJob'>,
): Promise<GhRunner> {
  const row = await db
    .insertInto('github_runners')
    .values({
      name: r.name,
      demand_key: r.demandKey,
      scope: r.scope.level,
      owner: r.scope.owner,
      repo: r.scope.repo,
      installation_id: r.installationId,
      labels: JSON.stringify(r.labels),
      for_job_id: r.forJob?.jobId ?? null,
      for_run_attempt: r.forJob?.runAttempt ?? null,
      state: 'pending',
    })
    .returningAll()
    .executeTakeFirstOrThrow();
  return runnerFromRow(row);
}

export async function updateRunner(db: Q, id: number, p: GhRunnerPatch): Promise<void> {
  const set = patchRow(p);
  if (Object.keys(set).length > 0) await db.updateTable('github_runners').set(set).where('id', '=', id).execute();
}

/** The runner whose VM is kiln job `kilnJobId`. */
export async function getRunnerByKilnJob(db: Q, kilnJobId: number): Promise<GhRunner | undefined> {
  const r = await db.selectFrom('github_runners').selectAll().where('kiln_job_id', '=', kilnJobId).executeTakeFirst();
  return r && runnerFromRow(r);
}

export async function getRunnerByName(db: Q, name: string): Promise<GhRunner | undefined> {
  const r = await db.selectFrom('github_runners').selectAll().where('name', '=', name).executeTakeFirst();
  return r && runnerFromRow(r);
}

export async function listRunnersIn(db: Q, states: readonly RunnerState[]): Promise<GhRunner[]> {
  if (states.length === 0) return [];
  const rows = await db.selectFrom('github_runners').selectAll().where('state', 'in', [...states]).orderBy('id').execute();
  return rows.map(runnerFromRow);
}

/** Runners for the API: live ones, or the latest 1,000 of any state. */
export async function listRunnersForApi(db: Q, all: boolean, limit = 1000): Promise<GhRunner[]> {
  let s = db.selectFrom('github_runners').selectAll().orderBy('id', 'desc').limit(limit);
  if (!all) s = s.where('state', 'in', [...LIVE_RUNNER_STATES]);
  return (await s.execute()).map(runnerFromRow);
}

/**
 * Makes `runner` stand for `job`, the job it took: an available runner that stood for that job now stands
 * for the one `runner` was started for, which stays in demand.
 */
export async function swapForJob(tx: Q, runner: GhRunner, job: GhJobKey, available: readonly RunnerState[]): Promise<void> {
  await tx
    .updateTable('github_runners')
    .set({ for_job_id: runner.forJob?.jobId ?? null, for_run_attempt: runner.forJob?.runAttempt ?? null })
    .where('for_job_id', '=', job.jobId)
    .where('for_run_attempt', '=', job.runAttempt)
    .where('state', 'in', [...available])
    .where('id', '<>', runner.id)
    .execute();
  await updateRunner(tx, runner.id, { forJob: job });
}

/** The registration scopes kiln used since `since` (ms), with an installation to act as. */
export async function recentRunnerScopes(db: Q, since: number): Promise<(RunnerScope & { installationId: number })[]> {
  const rows = await db
    .selectFrom('github_runners')
    .select(['scope', 'owner', 'repo', 'installation_id'])
    .distinct()
    .where('created_at', '>', new Date(since))
    .execute();
  return rows.map((s) => ({ level: s.scope === 'org' ? 'org' : 'repo', owner: s.owner, repo: s.repo, installationId: s.installation_id }));
}

/** Runners that are gone while their VM still lives and has not been asked to stop. */
export async function goneRunnersWithLiveVms(db: Q): Promise<{ name: string; kilnJobId: number }[]> {
  const rows = await db
    .selectFrom('github_runners')
    .innerJoin('jobs', 'jobs.id', 'github_runners.kiln_job_id')
    .select(['github_runners.kiln_job_id', 'github_runners.name'])
    .where('github_runners.state', '=', 'gone')
    .where('jobs.state', 'in', ['queued', 'placed', 'booting', 'running'])
    .where('jobs.cancel_requested', '=', false)
    .execute();
  return rows.flatMap((o) => (o.kiln_job_id === null ? [] : [{ name: o.name, kilnJobId: o.kiln_job_id }]));
}

/**
 * Runners that ended after running a job kiln has not heard of: the runner is stopping or gone with no job
 * bound, and its VM succeeded (not cancelled) since `since` (ms). An ephemeral runner's VM ends well only
 * after its one job, so each stands for a queued job of its key that is in fact taken (its in_progress
 * delivery is late or lost).
 */
export async function listUnheardRunners(db: Q, since: number): Promise<{ name: string; demandKey: string; finishedAt: number }[]> {
  const rows = await db
    .selectFrom('github_runners')
    .innerJoin('jobs', 'jobs.id', 'github_runners.kiln_job_id')
    .select(['github_runners.name', 'github_runners.demand_key', 'jobs.finished_at'])
    .where('github_runners.state', 'in', ['stopping', 'gone'])
    .where('github_runners.job_id', 'is', null)
    .where('jobs.state', '=', 'succeeded')
    .where('jobs.cancel_requested', '=', false)
    .where('jobs.finished_at', '>', new Date(since))
    .execute();
  return rows.map((r) => ({ name: r.name, demandKey: r.demand_key, finishedAt: ms(r.finished_at) ?? since }));
}

export async function countRunnersByState(db: Q): Promise<{ state: string; n: number }[]> {
  const rows = await db
    .selectFrom('github_runners')
    .select((e) => ['state', e.fn.countAll<string>().as('n')])
    .where('state', '<>', 'gone')
    .groupBy('state')
    .execute();
  return rows.map((r) => ({ state: r.state, n: Number(r.n) }));
}
