/**
 * Launch failures per host, as the store records them, so every replica sees the same ones (placement's
 * host penalties, src/server/scheduler/host-penalties.ts). A launch failure is a job that failed with a VM
 * error (it could not be launched, did not boot, or crashed: `error_code` set, other than `vm.killed`), or a
 * GitHub runner VM that failed before its runner took a job (a failed job whose runner row has no job bound).
 * Jobs that failed by their own exit status are not launch failures.
 */
import type { Db, Tx } from './store.ts';

export interface LaunchFailure {
  hostId: number;
  /** When the job ended (ms). */
  at: number;
}

export async function recentLaunchFailures(db: Db | Tx, since: number): Promise<LaunchFailure[]> {
  const rows = await db
    .selectFrom('jobs')
    .select(['jobs.host_id', 'jobs.finished_at'])
    .where('jobs.finished_at', '>', new Date(since))
    .where('jobs.state', '=', 'failed')
    .where('jobs.host_id', 'is not', null)
    .where((w) =>
      w.or([
        w.and([w('jobs.error_code', 'is not', null), w('jobs.error_code', '<>', 'vm.killed')]),
        w.exists(w.selectFrom('github_runners').select('github_runners.id').whereRef('github_runners.kiln_job_id', '=', 'jobs.id').where('github_runners.job_id', 'is', null)),
      ]),
    )
    .execute();
  return rows.flatMap((r) => (r.host_id === null || r.finished_at === null ? [] : [{ hostId: r.host_id, at: new Date(r.finished_at).getTime() }]));
}
