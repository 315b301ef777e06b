/**
 * Binding a GitHub job to the runner that took it, and filling its usage record. Called for every
 * in_progress and completed delivery and for every re-read that finds the job taken, in any order and any
 * number of times: a late delivery after a re-read still binds, a runner that took another job than the one
 * it was started for swaps with the runner that stood for that job, and the usage record only gains fields.
 */
import { isAvailableRunner, nextRunnerState } from '../../core/runner-state.ts';
import { AVAILABLE_RUNNER_STATES } from '../../core/runner-state.ts';
import { fillUsage, type GhJobKey, type GhUsagePatch } from '../../store/github-jobs.ts';
import { getRunnerByName, swapForJob, updateRunner } from '../../store/github-runners.ts';
import type { Db, Tx } from '../../store/store.ts';
import type { RunnerVmWrites } from './job-writes.ts';
import type { GitHubParts } from './parts.ts';

export interface TakenBy {
  runnerName: string | null;
  startedAt?: string | null | undefined;
  completedAt?: string | null | undefined;
  conclusion?: string | null | undefined;
}

/** What binding learnt: whether the runner is one of kiln's, and when it came online (null: not known). */
export interface Bound {
  ours: boolean;
  /** When the runner came online: seen online by the reconciler, else its VM started the runner (ISO). */
  onlineAt: string | null;
}

export async function bindRunner(q: Db | Tx, p: GitHubParts, vms: RunnerVmWrites, job: GhJobKey, t: TakenBy): Promise<Bound> {
  let onlineAt: string | null = null;
  const usage: GhUsagePatch = {};
  if (t.startedAt) usage.startedAt = t.startedAt;
  if (t.completedAt) usage.completedAt = t.completedAt;
  if (t.conclusion) usage.conclusion = t.conclusion;
  const runner = t.runnerName ? await getRunnerByName(q, t.runnerName) : undefined;
  if (t.runnerName) usage.runnerName = t.runnerName;
  if (runner) {
    const same = (a: GhJobKey | null) => a !== null && a.jobId === job.jobId && a.runAttempt === job.runAttempt;
    if (runner.job === null || same(runner.job)) {
      if (!same(runner.forJob)) await swapForJob(q, runner, job, AVAILABLE_RUNNER_STATES);
      if (runner.job === null) await updateRunner(q, runner.id, { job });
      if (isAvailableRunner(runner.state)) {
        await updateRunner(q, runner.id, { state: nextRunnerState(runner.state, { type: 'took_job' }), surplusSince: null });
        await vms.scrubJitConfig(q, runner.kilnJobId);
        p.log.info({ runner: runner.name, from: runner.state, to: 'busy', ghJobId: job.jobId }, 'runner state');
        p.events.emit('runner.state', { name: runner.name, state: 'busy' });
      }
    }
    if (runner.kilnJobId !== null) {
      usage.kilnJobId = runner.kilnJobId;
      const vm = await vms.get(q, runner.kilnJobId);
      if (vm) Object.assign(usage, { hostId: vm.hostId ?? undefined, cpus: vm.requirements.cpus, memoryBytes: vm.requirements.memoryBytes });
      onlineAt = vm?.runningAt ?? null;
    }
    if (runner.onlineAt !== null) onlineAt = new Date(runner.onlineAt).toISOString();
  }
  await fillUsage(q, job, usage);
  return { ours: runner !== undefined, onlineAt };
}
