/**
 * Ingest and admission by labels and allow-list: stored deliveries become job records, in batches, each in
 * one transaction with its delivery marked done. A job's first delivery decides by its labels (ignore,
 * refuse, or pending the checks against GitHub in admission.ts); later deliveries move its state forward
 * only, and every in_progress or completed delivery binds the runner that took the job, even when a re-read
 * already moved the job past it (binding.ts).
 */
import { isKilnError } from '../../core/errors.ts';
import { advances, ghStateOfAction, type GhDecision } from '../../core/github-job-state.ts';
import { claimPendingDeliveries, markDeliveryDone, recordJobAction } from '../../store/github-deliveries.ts';
import { fillUsage, getGhJobForUpdate, insertGhJob, openUsage, updateGhJob, type GhJob, type GhJobPatch } from '../../store/github-jobs.ts';
import type { Tx } from '../../store/store.ts';
import { bindRunner } from './binding.ts';
import type { RunnerVmWrites } from './job-writes.ts';
import type { GitHubParts } from './parts.ts';
import { parseWorkflowJob, type WorkflowJobEvent } from './payload.ts';
import { classifyLabels, listed } from './policy.ts';

const BATCH = 200;

/** Processes every stored delivery not yet processed. */
export async function ingestDeliveries(p: GitHubParts, vms: RunnerVmWrites): Promise<void> {
  for (;;) {
    const done = await p.ctx.store.withTransaction(async (tx) => {
      const rows = await claimPendingDeliveries(tx, BATCH);
      const out: { id: string; outcome: string }[] = [];
      for (const r of rows) {
        let outcome: string;
        try {
          outcome = await applyDelivery(tx, p, vms, r.deliveryId, parseWorkflowJob(r.payload));
        } catch (e) {
          if (!isKilnError(e, 'github.bad_payload')) throw e;
          p.log.warn({ delivery: r.deliveryId, err: { code: e.code, message: e.message } }, 'delivery ignored: unreadable payload');
          outcome = 'bad_payload';
        }
        await markDeliveryDone(tx, r.deliveryId, outcome, new Date(p.now()));
        out.push({ id: r.deliveryId, outcome });
      }
      return out;
    });
    for (const o of done) p.events.emit('delivery.processed', { deliveryId: o.id, outcome: o.outcome });
    if (done.length < BATCH) return;
  }
}

function demandKey(p: GitHubParts, e: { repo: string; owner: string; ownerType: string }, labelKey: string): string {
  return p.config.runnerLevel === 'org' && e.ownerType === 'Organization' ? `org:${e.owner.toLowerCase()}|${labelKey}` : `repo:${e.repo.toLowerCase()}|${labelKey}`;
}

async function applyDelivery(tx: Tx, p: GitHubParts, vms: RunnerVmWrites, deliveryId: string, e: WorkflowJobEvent): Promise<string> {
  const to = ghStateOfAction(e.action);
  if (!to) return 'ignored';
  const key = { jobId: e.jobId, runAttempt: e.runAttempt };
  if (!(await recordJobAction(tx, { ...key, action: e.action, deliveryId }))) return 'duplicate_action';
  const at = new Date(p.now()).toISOString();
  const times: GhJobPatch = {
    // Every action's payload carries the job's creation (queue) time: a job whose queued delivery comes last
    // still gets it.
    ...(to === 'queued' || to === 'waiting' ? { queuedAt: e.createdAt ?? at } : e.createdAt ? { queuedAt: e.createdAt } : {}),
    ...(to === 'in_progress' ? { startedAt: e.startedAt ?? at, runnerName: e.runnerName } : {}),
    ...(to === 'completed' ? { completedAt: e.completedAt ?? at, conclusion: e.conclusion, ...(e.runnerName ? { runnerName: e.runnerName } : {}) } : {}),
  };
  const existing = await getGhJobForUpdate(tx, key);
  let job: GhJob;
  let outcome = 'applied';
  if (!existing) {
    const c = classifyLabels(e.labels);
    let decision: GhDecision = 'pending';
    let code: string | null = null;
    let reason: string | null = null;
    if (c.kind === 'ignore') decision = 'ignored';
    else if (c.kind === 'refuse') [decision, code, reason] = ['refused', c.code, c.reason];
    else if (!listed(p.config.allow, e.repo))
      [decision, code, reason] = ['refused', 'github.repo_not_allowed', `${e.repo} is not in kiln's GitHub allow-list (KILN_GITHUB_ALLOW or github.allow)`];
    job = await insertGhJob(tx, {
      ...key,
      runId: e.runId,
      repo: e.repo,
      owner: e.owner,
      ownerType: e.ownerType,
      private: e.isPrivate,
      installationId: e.installationId,
      labels: e.labels,
      demandKey: c.kind === 'accept' ? demandKey(p, e, c.labelKey) : null,
      state: to,
      decision,
      reasonCode: code,
      reason,
      workflow: e.workflow,
      headBranch: e.headBranch,
      sender: e.sender,
      org: e.org,
      runnerName: times.runnerName ?? null,
      conclusion: times.conclusion ?? null,
      ...(times.queuedAt ? { queuedAt: times.queuedAt } : {}),
      ...(times.startedAt ? { startedAt: times.startedAt } : {}),
      ...(times.completedAt ? { completedAt: times.completedAt } : {}),
    });
    if (decision === 'ignored') outcome = 'ignored';
    if (decision === 'refused') {
      outcome = 'refused';
      p.log.warn({ ghJobId: e.jobId, repo: e.repo, code, reason }, 'GitHub job refused');
      p.events.emit('job.refused', { ...key, code: code ?? '', reason: reason ?? '' });
    }
    if (c.kind !== 'ignore') {
      await openUsage(tx, { ...key, repo: e.repo, org: e.org, sender: e.sender, labels: e.labels, workflow: e.workflow, ...usageTimes(times) });
    }
  } else {
    if (existing.decision === 'ignored') outcome = 'ignored';
    if (advances(existing.state, to)) {
      job = (await updateGhJob(tx, key, { state: to, updatedAt: p.now(), ...times, ...(existing.installationId === null && e.installationId ? { installationId: e.installationId } : {}) }))!;
    } else {
      // Stale for the job's state (a re-read or a later delivery came first), but it may still carry the
      // runner and times the record lacks: fill them below, never move the state back.
      job = existing;
      outcome = 'stale';
      if (to === 'queued' || to === 'waiting') {
        if (job.decision !== 'ignored' && times.queuedAt) await fillUsage(tx, key, { queuedAt: times.queuedAt });
        return outcome;
      }
    }
  }
  let runnerOnlineAt: string | null = null;
  if (job.decision !== 'ignored' && (to === 'in_progress' || to === 'completed')) {
    const bound = await bindRunner(tx, p, vms, key, { runnerName: e.runnerName, ...usageTimes(times) });
    runnerOnlineAt = bound.onlineAt;
    await settleUndecided(tx, p, job, bound.ours);
  }
  // Once per job attempt (actions are deduplicated above): the pickup figure (src/server/reports/figures.ts).
  if (to === 'in_progress' && job.decision !== 'ignored' && job.decision !== 'refused') {
    p.events.emit('job.started', { ...key, labels: job.labels, createdAt: times.queuedAt ?? job.queuedAt, startedAt: times.startedAt ?? job.startedAt, runnerOnlineAt });
  }
  return outcome;
}

/**
 * A job that left the queue (taken or completed) before kiln decided on it gets a final decision, so the API
 * does not show it pending forever: accepted when one of kiln's runners took it, else ignored with why.
 */
export async function settleUndecided(q: Tx | GitHubParts['db'], p: GitHubParts, job: GhJob, ours: boolean): Promise<void> {
  if (job.decision !== 'pending') return;
  await updateGhJob(
    q,
    job,
    ours
      ? { decision: 'accepted', updatedAt: p.now() }
      : { decision: 'ignored', reasonCode: 'github.left_queue', reason: 'the job left the queue (taken by another runner, or cancelled) before kiln decided on it', updatedAt: p.now() },
  );
}

const usageTimes = (t: GhJobPatch) => ({
  ...(t.queuedAt ? { queuedAt: t.queuedAt } : {}),
  ...(t.startedAt ? { startedAt: t.startedAt } : {}),
  ...(t.completedAt ? { completedAt: t.completedAt } : {}),
  ...(t.conclusion ? { conclusion: t.conclusion } : {}),
});
