/**
 * The provisioner carries out a plan (planner.ts) and owns every runner state change: register a JIT runner
 * and queue its VM, retire a runner (registration first, then VM), keep runners and their VMs in step, and
 * count every way a runner ends before it took a job against that job (backoff, then a bounded give-up).
 */
import { randomBytes } from 'node:crypto';
import { KilnError, isKilnError, toKilnError } from '../../core/errors.ts';
import type { JobSpec } from '../../core/job.ts';
import { cacheFromLabels } from '../../core/requirements.ts';
import { isTerminal } from '../../core/job-state.ts';
import { isAvailableRunner, nextRunnerState, LIVE_RUNNER_STATES, type RunnerEvent } from '../../core/runner-state.ts';
import { getGhJob, listQueuedAccepted, recentDemandKeys, updateGhJob, type GhJob, type GhJobKey } from '../../store/github-jobs.ts';
import { goneRunnersWithLiveVms, insertRunner, listUnheardRunners, listRunnersIn, updateRunner, type GhRunner, type GhRunnerPatch } from '../../store/github-runners.ts';
import { isRetryable } from '../../core/error-catalogue.ts';
import type { Scope } from './api.ts';
import { RUNNER_ENV, type RunnerVmWrites } from './job-writes.ts';
import { jobInstallation, runnerInstallation, runnerScope, type GitHubParts } from './parts.ts';
import { planProvisioning } from './planner.ts';
import { backoffMs, classifyLabels } from './policy.ts';

/** Label sets used within this window keep their spare runners (KILN_GITHUB_SPARE_RUNNERS). */
export const SPARE_WINDOW_MS = 24 * 3600_000;

/**
 * How long a runner that ended after an unheard-of job holds its key's registrations back (planner.ts,
 * `unheard`): until the late delivery binds it, or at most this long, by which time the reconciler has
 * re-read the key's queued jobs (reconciler.ts).
 */
const countByKey = (rs: readonly { demandKey: string }[]): Map<string, number> => {
  const m = new Map<string, number>();
  for (const r of rs) m.set(r.demandKey, (m.get(r.demandKey) ?? 0) + 1);
  return m;
};

/**
 * The unheard runners that still hold back a registration: those whose key has a queued job last read from
 * GitHub before the runner ended. Once the reconciler has read them all since (reconciler.ts, doubt (1)), a
 * job the runner took would show as taken: a runner still unheard then took none (its registration was
 * removed and it exited well), and holds nothing back.
 */
function stillUnheard<T extends { demandKey: string; finishedAt: number }>(unheard: readonly T[], queued: readonly Pick<GhJob, 'demandKey' | 'checkedAt'>[]): T[] {
  const oldestRead = new Map<string, number>();
  for (const j of queued) if (j.demandKey) oldestRead.set(j.demandKey, Math.min(oldestRead.get(j.demandKey) ?? Infinity, j.checkedAt ?? -Infinity));
  return unheard.filter((u) => (oldestRead.get(u.demandKey) ?? Infinity) < u.finishedAt);
}

export const unheardWindowMs = (c: { recheckMs: number; reconcileMs: number }): number => c.recheckMs + 2 * c.reconcileMs;

export interface Provisioner {
  /** Applies a runner event (the state machine decides the state); logs and emits the change. */
  setRunner(r: GhRunner, event: RunnerEvent, fields?: GhRunnerPatch): Promise<void>;
  /** Takes a runner out: registration first (404 is fine), then its VM. */
  retire(r: GhRunner, reason: string, o?: { orphan?: boolean }): Promise<void>;
  /** A runner ended before it took a job: count it against the job it stood for. */
  runnerFailed(r: GhRunner, err: KilnError): Promise<void>;
  /** VMs that ended take their runner with them; runners that are gone take their VM with them. */
  syncWithVms(): Promise<void>;
  /** Plans and starts the runners queued jobs need; retires idle surplus. */
  provision(): Promise<void>;
}

export function makeProvisioner(p: GitHubParts, vms: RunnerVmWrites): Provisioner {
  const { config, api, db, log, events } = p;
  const stopTried = new Map<number, number>();
  /** Spare runners that ended before taking a job, per demand key: backoff for the key's spares (this leader's memory). */
  const spareFailures = new Map<string, { failures: number; notBefore: number }>();

  async function setRunner(r: GhRunner, event: RunnerEvent, fields: GhRunnerPatch = {}): Promise<void> {
    const state = nextRunnerState(r.state, event);
    await updateRunner(db, r.id, { state, ...fields, ...(state === 'gone' ? { endedAt: p.now() } : {}) });
    if (state === 'online' || state === 'busy' || state === 'gone') await vms.scrubJitConfig(db, r.kilnJobId);
    if (state === 'online') spareFailures.delete(r.demandKey);
    if (state !== r.state) {
      const reason = event.type === 'retire' ? event.reason : event.type === 'ended' ? event.reason : undefined;
      log.info({ runner: r.name, from: r.state, to: state, ...(reason ? { reason } : {}) }, 'runner state');
      events.emit('runner.state', { name: r.name, state, ...(reason ? { reason } : {}) });
    }
  }

  async function failJob(j: Pick<GhJob, 'jobId' | 'runAttempt' | 'failures'>, err: KilnError, runner?: string): Promise<void> {
    const failures = j.failures + 1;
    const retry = isRetryable(err) || err.code.startsWith('vm.') || err.code.startsWith('image.') || err.code === 'github.runner_exited';
    const next = p.now() + backoffMs(failures, config.backoffBaseMs, config.backoffMaxMs);
    await updateGhJob(db, j, { failures, nextAttemptAt: next, reasonCode: err.code, reason: err.message });
    p.metrics.runnerFailures.inc({ code: err.code });
    log.warn({ ghJobId: j.jobId, runner, failures, code: err.code, reason: err.message, retryInMs: next - p.now() }, 'runner failed before taking its job');
    if (runner) events.emit('runner.failed', { name: runner, jobId: j.jobId, runAttempt: j.runAttempt, code: err.code, failures });
    if (!retry || failures >= config.maxFailures) {
      const code = failures >= config.maxFailures ? 'github.provision_failed' : err.code;
      const reason = `no runner could be started for this job after ${failures} attempt(s): ${err.message}`;
      await updateGhJob(db, j, { decision: 'refused', reasonCode: code, reason });
      p.metrics.giveUps.inc();
      log.error({ ghJobId: j.jobId, code, reason }, 'GitHub job given up');
      events.emit('job.refused', { jobId: j.jobId, runAttempt: j.runAttempt, code, reason });
    }
  }

  /** A spare runner (standing for no job) ended before it took one: its key's spares back off. */
  function spareFailed(r: Pick<GhRunner, 'demandKey' | 'name'>, err: KilnError): void {
    const failures = (spareFailures.get(r.demandKey)?.failures ?? 0) + 1;
    const retryInMs = backoffMs(failures, config.backoffBaseMs, config.backoffMaxMs);
    spareFailures.set(r.demandKey, { failures, notBefore: p.now() + retryInMs });
    p.metrics.runnerFailures.inc({ code: err.code });
    log.warn({ runner: r.name, demandKey: r.demandKey, failures, code: err.code, reason: err.message, retryInMs }, 'spare runner failed before taking a job');
  }

  async function runnerFailed(r: GhRunner, err: KilnError): Promise<void> {
    if (r.job !== null) return;
    if (r.forJob === null) return spareFailed(r, err);
    const j = await getGhJob(db, r.forJob);
    if (j && j.decision === 'accepted') await failJob(j, err, r.name);
  }

  /** Registers a runner for `forJob` (null: a spare) with the labels and scope of job `j`, and queues its VM. */
  async function startRunner(j: GhJob, forJob: GhJobKey | null = j): Promise<void> {
    const c = classifyLabels(j.labels);
    if (c.kind !== 'accept') return;
    const [owner = j.owner, repoName = ''] = j.repo.split('/');
    const level: Scope['level'] = j.demandKey?.startsWith('org:') ? 'org' : 'repo';
    const scope: Scope = { level, owner, repo: level === 'org' ? null : repoName };
    const inst = jobInstallation(j);
    const newName = () => `${config.runnerNamePrefix}-${randomBytes(6).toString('hex')}`;
    let name = newName();
    // Persist the intended name before calling GitHub: a lost answer then leaves a row the 409 path finds.
    const row = await insertRunner(db, { name, demandKey: j.demandKey ?? '', scope, installationId: j.installationId ?? 0, labels: c.runnerLabels, forJob: forJob && { jobId: forJob.jobId, runAttempt: forJob.runAttempt } });
    events.emit('runner.state', { name, state: 'pending' });
    let jit: { runnerId: number; encodedJitConfig: string } | undefined;
    for (let tries = 0; !jit; tries++) {
      try {
        jit = await api.generateJitConfig(inst, scope, { name, labels: c.runnerLabels, runnerGroupId: config.runnerGroupId });
      } catch (e) {
        if (isKilnError(e, 'github.runner_exists') && tries < 2) {
          // The first call may have succeeded with its answer lost: remove that registration if it is
          // ours and unused, then retry under a new name.
          const [found] = await api.listRunners(inst, scope, name);
          if (found && !found.busy) await api.deleteRunner(inst, scope, found.id).catch(() => undefined);
          name = newName();
          await updateRunner(db, row.id, { name });
          log.info({ runner: name }, 'runner name taken on GitHub; retrying under a new name');
          continue;
        }
        const err = toKilnError(e);
        await setRunner({ ...row, name }, { type: 'ended', reason: err.message }, { lastError: `${err.code}: ${err.message}` });
        // A rate limit (GitHub's, or kiln's own budget) is not the job's fault: no failure counted, the
        // next pass after the hold tries again.
        if (err.code !== 'github.throttled' && err.code !== 'github.rate_limited') {
          if (forJob) await failJob(j, err);
          else spareFailed(row, err);
        }
        return;
      }
    }
    const kilnJob = await vms.submit({
      tenant: config.tenant,
      requirements: c.requirements,
      labels: j.labels,
      image: config.runnerImage,
      command: config.runnerCommand,
      env: { [RUNNER_ENV]: jit.encodedJitConfig, KILN_RUNNER_NAME: name },
      secretEnv: [RUNNER_ENV],
      timeoutMs: config.runnerTimeoutMs,
      network: 'user',
      priority: 0,
      ...runnerCache(config.tenant, j),
      egressRepo: j.repo,
    });
    await setRunner({ ...row, name }, { type: 'registered' }, { runnerId: jit.runnerId, kilnJobId: kilnJob.id });
    log.info({ runner: name, ...(forJob ? { ghJobId: forJob.jobId } : { spare: true }), jobId: kilnJob.id, labels: c.runnerLabels }, 'runner VM queued');
  }

  /**
   * Takes a runner out: its registration first (so GitHub gives it no job meanwhile; 404 is fine; skipped
   * when `unregistered`: an ephemeral runner that ran its job is gone from GitHub already), then its VM. A busy registration (422) means GitHub handed it a job just now: while its VM lives the runner is
   * kept (busy); when the VM is already gone the removal is retried later.
   */
  async function retire(r: GhRunner, reason: string, o: { orphan?: boolean; unregistered?: boolean } = {}): Promise<void> {
    if (r.state !== 'stopping') await setRunner(r, { type: 'retire', reason }, { lastError: reason });
    const stopping: GhRunner = { ...r, state: 'stopping' };
    if (r.runnerId !== null && !o.unregistered) {
      try {
        await api.deleteRunner(runnerInstallation(r), runnerScope(r), r.runnerId);
      } catch (e) {
        if (!isKilnError(e, 'github.runner_busy')) throw e;
        // An orphan (offline but busy) loses its VM now; its registration goes once GitHub lets go.
        if (o.orphan) return vms.cancel(r.kilnJobId, reason);
        const vm = r.kilnJobId === null ? undefined : await vms.get(db, r.kilnJobId);
        if (vm && !isTerminal(vm.state) && !vm.cancelRequested) await setRunner(stopping, { type: 'took_job' }, { lastError: null });
        return;
      }
    }
    await vms.cancel(r.kilnJobId, reason);
    await setRunner(stopping, { type: 'ended' });
    stopTried.delete(r.id);
  }

  async function syncWithVms(): Promise<void> {
    const rows = await listRunnersIn(db, LIVE_RUNNER_STATES);
    const ids = rows.flatMap((r) => (r.kilnJobId === null ? [] : [r.kilnJobId]));
    const st = new Map((await vms.statuses(ids)).map((s) => [s.id, s]));
    for (const r of rows) {
      await p.step(`cleaning up runner ${r.name}`, async () => {
        const kj = r.kilnJobId === null ? undefined : st.get(r.kilnJobId);
        if (r.state === 'stopping') {
          // A busy registration (422) is retried at the reconciler's pace, not on every pass.
          if (p.now() - (stopTried.get(r.id) ?? 0) < config.reconcileMs) return;
          stopTried.set(r.id, p.now());
          return retire(r, r.lastError ?? 'cleanup');
        }
        if (kj && isTerminal(kj.state)) {
          // A VM that ended before its runner took a job (launch refused, image missing, the runner command
          // failing, the VM lost) counts against the job: backoff, then a bounded give-up.
          // (A spare that idled to its VM's time limit did not fail: it is replaced, not backed off.)
          const idleSpareTimedOut = r.forJob === null && kj.state === 'timed_out';
          if (isAvailableRunner(r.state) && r.job === null && kj.state !== 'succeeded' && !kj.cancelRequested && !idleSpareTimedOut) {
            const vm = await vms.get(db, kj.id);
            const err = vm?.error
              ? new KilnError(vm.error.code, `the runner VM failed before the runner took a job: ${vm.error.message}`)
              : new KilnError('github.runner_exited', `the runner VM ended (${kj.state}${vm?.exitCode !== null && vm?.exitCode !== undefined ? `, exit status ${vm.exitCode}` : ''}) before the runner took a job`, {
                  hint: 'check the runner image and command (KILN_GITHUB_RUNNER_IMAGE, KILN_GITHUB_RUNNER_COMMAND) and the VM log: kiln logs <job>',
                });
            // A VM error (launch refused, no boot, crash) was reported against its host by the gateway; a
            // runner that exited on its own before taking a job counts against the host here.
            if (vm && !vm.error && vm.hostId !== null) events.emit('host.launch_failed', { hostId: vm.hostId, jobId: vm.id, code: err.code });
            await retire(r, `its VM ended (${kj.state}) before it took a job`);
            return runnerFailed(r, err);
          }
          // A runner that ended well without kiln hearing of a job ran one whose deliveries are late or lost
          // (which one is not known: GitHub hands a runner any queued job of its labels). It holds back one
          // registration of its key (planner.ts, `unheard`); if no delivery names it, the reconciler re-reads
          // the key's queued jobs.
          // A runner that took its job and exited 0 was ephemeral (JIT): GitHub removed its registration when
          // the job ended, so asking again would only be answered 404. Were it left somehow, the reconciler's
          // listing removes any registration with kiln's prefix that no live runner owns.
          const unregistered = kj.state === 'succeeded' && r.job !== null;
          return retire(r, `its VM ended (${kj.state})`, { unregistered });
        }
        if (r.state === 'pending' && p.now() - r.createdAt > 60_000 && r.runnerId === null) {
          // A pass died between persisting the name and registering: nothing on GitHub under this name yet
          // (or a 409 recovery handles it); let provisioning start over.
          return setRunner(r, { type: 'ended', reason: 'registration interrupted' }, { lastError: 'registration interrupted' });
        }
      });
    }
    // VMs whose runner is gone (the reconciler removed it): stop them.
    for (const o of await goneRunnersWithLiveVms(db)) await p.step(`stopping the VM of ${o.name}`, () => vms.cancel(o.kilnJobId, 'its runner is gone'));
  }

  async function provision(): Promise<void> {
    const demand = await listQueuedAccepted(db);
    const live = await listRunnersIn(db, LIVE_RUNNER_STATES);
    const byId = new Map(live.map((r) => [r.id, r]));
    const jobs = new Map(demand.map((j) => [`${j.jobId}/${j.runAttempt}`, j]));
    // The surplus applies to the label sets used in the last 24 h; each is registered like its newest job.
    const templates = config.spareRunners > 0 ? new Map((await recentDemandKeys(db, p.now() - SPARE_WINDOW_MS)).map((j) => [j.demandKey ?? '', j])) : new Map<string, GhJob>();
    const plan = planProvisioning(
      demand.flatMap((j) => (j.demandKey ? [{ key: { jobId: j.jobId, runAttempt: j.runAttempt }, demandKey: j.demandKey, nextAttemptAt: j.nextAttemptAt }] : [])),
      live,
      { maxRunners: config.maxRunners, idleGraceMs: config.idleGraceMs, spare: config.spareRunners },
      p.now(),
      new Map([...templates.keys()].map((k) => [k, spareFailures.get(k)?.notBefore ?? null])),
      countByKey(stillUnheard(await listUnheardRunners(db, p.now() - unheardWindowMs(config)), demand)),
    );
    for (const id of plan.clearSurplus) await updateRunner(db, id, { surplusSince: null });
    for (const id of plan.markSurplus) await updateRunner(db, id, { surplusSince: p.now() });
    for (const id of plan.retireUnneeded) {
      const r = byId.get(id)!;
      await p.step(`retiring runner ${r.name}`, () => retire(r, 'no queued job of its label set is left'));
    }
    for (const id of plan.retireIdle) {
      const r = byId.get(id)!;
      await p.step(`retiring surplus runner ${r.name}`, async () => {
        const gh = r.runnerId === null ? null : await api.getRunner(runnerInstallation(r), runnerScope(r), r.runnerId);
        if (gh?.busy) return setRunner(r, { type: 'took_job' });
        return retire(r, 'idle past the grace period with no queued job for it');
      });
    }
    if (plan.waiting.length > 0) log.debug({ keys: plan.waiting }, 'runner capacity full; queued jobs wait');
    for (const k of plan.start) {
      const j = jobs.get(`${k.jobId}/${k.runAttempt}`)!;
      // No read of the job before registering, however long it waited for runner budget: admission read it,
      // and a job that leaves the queue meanwhile says so through its delivery (or GitHub's redelivery). Were
      // both lost, the runner registered for it would idle online, and the reconciler re-reads the queued jobs
      // of a key whose runner idles (reconciler.ts): one registration, not a read per waiting job.
      await p.step(`provisioning a runner for GitHub job ${k.jobId}`, () => startRunner(j));
    }
    for (const key of plan.startSpare) {
      const t = templates.get(key)!;
      await p.step(`starting a spare runner for ${key}`, () => startRunner(t, null));
    }
  }

  return { setRunner, retire, runnerFailed, syncWithVms, provision };
}

/**
 * A runner VM's warm cache (docs/caches.md): the job's `kiln-cache` label (the repository's cache) or
 * `kiln-cache-KEY`, kept under the GitHub tenant and the repository. Whether the runner may write it back is
 * asked after the job ('ask'): a runner takes whichever matching job GitHub gives it.
 */
export function runnerCache(tenant: string, j: Pick<GhJob, 'labels' | 'repo'>): Pick<JobSpec, 'cache'> {
  const k = cacheFromLabels(j.labels);
  if (k === undefined) return {};
  return { cache: { key: `${tenant}/${j.repo.toLowerCase()}${k ? `/${k}` : ''}`, write: 'ask', by: `github ${j.repo}` } };
}
