/**
 * The provisioning planner: pure. From the demand (accepted jobs queued on GitHub), the live runners, the
 * budget and the time, it decides which jobs get a new runner, which runners are surplus, and which surplus
 * runners have idled past their grace. The provisioner (provisioner.ts) carries the plan out.
 *
 * The rules (docs/ARCHITECTURE.md, "GitHub Actions"):
 * - A runner can serve any queued job of its demand key (scope and label set); GitHub does not pin runners to
 *   jobs. So a key needs as many available runners (pending, starting, online) as it has queued jobs.
 * - Registrations: no more new runners in a key than its queued jobs minus its available runners; never one
 *   for a job a live runner already stands for, for a job in backoff, or beyond the runner budget.
 * - The surplus (`budget.spare`, KILN_GITHUB_SPARE_RUNNERS): a key in `spareKeys` (label sets used lately)
 *   wants `spare` available runners beyond its queued jobs, started after every job's runner and within the
 *   budget, none while a job of the key or the key's spares are in backoff (something keeps failing there).
 *   Spares stand for no job; GitHub hands them the next queued job of their key.
 * - Retirement: a runner is never retired while a queued job of its key may still need it. Online runners
 *   beyond the key's queued jobs are surplus; they are retired after the idle grace (the provisioner first
 *   asks GitHub whether they took a job meanwhile). A runner not yet online is retired only when its key
 *   has no queued job left at all (its job was cancelled or taken elsewhere): while the key has queued
 *   jobs it may be the runner one of them needs, and retiring it only to register another is how bursts
 *   churned. (Runners that never come online end through the boot timeout in the reconciler.)
 * - Unheard runners (`unheard`): a runner whose VM ended well after it went online without kiln hearing
 *   which job it took (its in_progress delivery is late) took one of its key's queued jobs; kiln's demand
 *   still counts that job. Each such runner lowers its key's need for new runners by one, so a burst whose
 *   deliveries lag behind its runners does not register a runner for a job that already ran. It only holds
 *   registrations back, never retires anything, and lasts only until the key's queued jobs have been read
 *   from GitHub since the runner ended (the provisioner decides which runners still count).
 */
import type { GhJobKey } from '../../store/github-jobs.ts';
import type { RunnerState } from '../../core/runner-state.ts';

export interface DemandJob {
  key: GhJobKey;
  demandKey: string;
  /** No new runner for it before this time (backoff after a failed runner), or null. */
  nextAttemptAt: number | null;
}

export interface PlanRunner {
  id: number;
  demandKey: string;
  state: RunnerState;
  forJob: GhJobKey | null;
  surplusSince: number | null;
  createdAt: number;
}

export interface PlanBudget {
  /** Most live runners at once. */
  maxRunners: number;
  /** Idle online surplus runners are kept this long before they are retired. */
  idleGraceMs: number;
  /** Available runners a key of `spareKeys` keeps ready beyond its queued jobs (the configured surplus). */
  spare: number;
}

export interface Plan {
  /** Jobs to start a runner for, in order (oldest first). */
  start: GhJobKey[];
  /** Spare runners to start, one entry (its demand key) per runner, after the jobs' runners. */
  startSpare: string[];
  /** Surplus online runners to mark (their idle grace starts now). */
  markSurplus: number[];
  /** Runners marked surplus that are needed again. */
  clearSurplus: number[];
  /** Surplus runners idle past the grace: retire unless GitHub says they took a job. */
  retireIdle: number[];
  /** Runners not yet online in keys with no queued job left: retire now. */
  retireUnneeded: number[];
  /** Keys whose queued jobs wait for runner budget. */
  waiting: string[];
}

const AVAILABLE: ReadonlySet<RunnerState> = new Set(['pending', 'starting', 'online']);
const LIVE: ReadonlySet<RunnerState> = new Set(['pending', 'starting', 'online', 'busy', 'stopping']);
const id = (k: GhJobKey) => `${k.jobId}/${k.runAttempt}`;

/**
 * `spareKeys`: the keys the surplus applies to, each with the time before which no spare may start (a spare
 * of the key failed: backoff), or null. `unheard`: per key, runners that ended after taking a job kiln has
 * not heard of yet.
 */
export function planProvisioning(
  demand: readonly DemandJob[],
  runners: readonly PlanRunner[],
  budget: PlanBudget,
  now: number,
  spareKeys: ReadonlyMap<string, number | null> = new Map(),
  unheard: ReadonlyMap<string, number> = new Map(),
): Plan {
  const plan: Plan = { start: [], startSpare: [], markSurplus: [], clearSurplus: [], retireIdle: [], retireUnneeded: [], waiting: [] };
  const spareOf = (key: string) => (budget.spare > 0 && spareKeys.has(key) ? budget.spare : 0);
  const live = runners.filter((r) => LIVE.has(r.state));
  const jobsByKey = group(demand, (j) => j.demandKey);
  const availableByKey = group(
    live.filter((r) => AVAILABLE.has(r.state)),
    (r) => r.demandKey,
  );
  const claimed = new Set(live.flatMap((r) => (r.forJob ? [id(r.forJob)] : [])));

  for (const [key, avail] of availableByKey) {
    const want = (jobsByKey.get(key)?.length ?? 0) + spareOf(key);
    const online = avail.filter((r) => r.state === 'online');
    // Only online runners can be surplus, and only as many as the key has runners beyond its demand.
    const surplus = Math.min(online.length, avail.length - want);
    // Runners standing for no queued job go first; among them, the newest.
    const queued = new Set((jobsByKey.get(key) ?? []).map((j) => id(j.key)));
    const order = [...online].sort((a, b) => rankForJob(a, queued) - rankForJob(b, queued) || b.createdAt - a.createdAt);
    const out = new Set(order.slice(0, Math.max(0, surplus)).map((r) => r.id));
    if (want === 0) for (const r of avail) if (r.state !== 'online') plan.retireUnneeded.push(r.id);
    for (const r of avail) {
      if (r.state !== 'online' && want === 0) continue;
      if (!out.has(r.id)) {
        if (r.surplusSince !== null) plan.clearSurplus.push(r.id);
        continue;
      }
      if (r.surplusSince === null) plan.markSurplus.push(r.id);
      else if (now - r.surplusSince >= budget.idleGraceMs) plan.retireIdle.push(r.id);
    }
  }

  let room = budget.maxRunners - live.length;
  const started = new Map<string, number>();
  for (const [key, jobs] of jobsByKey) {
    let need = jobs.length - (availableByKey.get(key)?.length ?? 0) - (unheard.get(key) ?? 0);
    for (const j of jobs) {
      if (need <= 0) break;
      if (claimed.has(id(j.key))) continue;
      if (j.nextAttemptAt !== null && j.nextAttemptAt > now) continue;
      if (room <= 0) {
        plan.waiting.push(key);
        break;
      }
      plan.start.push(j.key);
      started.set(key, (started.get(key) ?? 0) + 1);
      claimed.add(id(j.key));
      need--;
      room--;
    }
  }
  // The surplus, after every job's runner: each key of spareKeys up to its queued jobs + spare.
  for (const key of [...spareKeys.keys()].sort()) {
    const spare = spareOf(key);
    if (spare === 0) continue;
    const notBefore = spareKeys.get(key) ?? null;
    const jobs = jobsByKey.get(key) ?? [];
    const queued = Math.max(0, jobs.length - (unheard.get(key) ?? 0));
    if ((notBefore !== null && notBefore > now) || jobs.some((j) => j.nextAttemptAt !== null && j.nextAttemptAt > now)) continue;
    const have = (availableByKey.get(key)?.length ?? 0) + (started.get(key) ?? 0);
    const need = Math.min(spare, queued + spare - have);
    for (let k = 0; k < need; k++) {
      if (room <= 0) {
        if (!plan.waiting.includes(key)) plan.waiting.push(key);
        break;
      }
      plan.startSpare.push(key);
      room--;
    }
  }
  return plan;
}

/** 0: stands for no queued job (surplus first); 1: stands for one. */
const rankForJob = (r: PlanRunner, queued: Set<string>) => (r.forJob && queued.has(id(r.forJob)) ? 1 : 0);

function group<T>(xs: readonly T[], k: (x: T) => string): Map<string, T[]> {
  const m = new Map<string, T[]>();
  for (const x of xs) {
    const key = k(x);
    const list = m.get(key);
    if (list) list.push(x);
    else m.set(key, [x]);
  }
  return m;
}
