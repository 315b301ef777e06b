/**
 * Admission against GitHub, before any VM: a job that passed its labels and the allow-list is checked
 * through the API (installation, fork pull request, still queued) and accepted or refused with a reason.
 * Also the re-read (`reread`) that every later stage uses: it moves a job's record forward when GitHub knows
 * more than the webhooks told, and binds the runner that took it.
 */
import { advances, ghStateOfAction } from '../../core/github-job-state.ts';
import { listUndecided, updateGhJob, type GhJob } from '../../store/github-jobs.ts';
import { bindRunner } from './binding.ts';
import { settleUndecided } from './ingest.ts';
import type { RunnerVmWrites } from './job-writes.ts';
import { jobInstallation, type GitHubParts } from './parts.ts';
import { forkDecision, listed } from './policy.ts';

export async function refuseJob(p: GitHubParts, j: GhJob, code: string, reason: string): Promise<void> {
  await updateGhJob(p.db, j, { decision: 'refused', reasonCode: code, reason, updatedAt: p.now() });
  p.log.warn({ ghJobId: j.jobId, repo: j.repo, code, reason }, 'GitHub job refused');
  p.events.emit('job.refused', { jobId: j.jobId, runAttempt: j.runAttempt, code, reason });
}

/** Reads the job from GitHub (`why`: counted in kiln_github_job_reads_total); true when it is still queued. */
export async function reread(p: GitHubParts, vms: RunnerVmWrites, j: GhJob, why: 'admission' | 'unheard_runner' | 'idle_runner' | 'cache_trust'): Promise<boolean> {
  p.metrics.jobReads.inc({ why });
  const gj = await p.api.getJob(jobInstallation(j), j.jobId);
  const at = p.now();
  if (!gj) {
    await updateGhJob(p.db, j, { state: 'completed', checkedAt: at, reason: 'the job no longer exists on GitHub' });
    return false;
  }
  const st = ghStateOfAction(gj.status);
  const forward = st && st !== 'waiting' && advances(j.state, st) ? { state: st } : {};
  await updateGhJob(p.db, j, { checkedAt: at, ...forward });
  if ((st === 'in_progress' || st === 'completed') && gj.runnerName) {
    const bound = await bindRunner(p.db, p, vms, j, { runnerName: gj.runnerName, startedAt: gj.startedAt, completedAt: gj.completedAt, conclusion: gj.conclusion });
    await settleUndecided(p.db, p, j, bound.ours);
  } else if (st === 'completed') {
    await settleUndecided(p.db, p, j, false);
  }
  return gj.status === 'queued';
}

/** Decides the jobs waiting for a decision. */
export async function admitJobs(p: GitHubParts, vms: RunnerVmWrites): Promise<void> {
  const { config } = p;
  for (const j of await listUndecided(p.db, p.now() - config.recheckMs, 500)) {
    await p.step(`checking GitHub job ${j.jobId}`, async () => {
      if (j.installationId === null) return refuseJob(p, j, 'github.no_installation', 'the delivery did not come through the GitHub App (no installation id)');
      if (!j.private && !listed(config.forkPrAllowed, j.repo)) {
        const run = await p.api.getRun(jobInstallation(j), j.runId);
        const f = forkDecision({ repo: j.repo, isPrivate: j.private, headRepo: run?.headRepo ?? null, forkPrAllowed: config.forkPrAllowed });
        if (!f.ok) return refuseJob(p, j, f.code, f.reason);
      }
      if (await reread(p, vms, j, 'admission')) await updateGhJob(p.db, j, { decision: 'accepted', updatedAt: p.now() });
    });
  }
}
