/**
 * The reconciler, for everything webhooks miss: each scope's runners are listed from GitHub and every live
 * runner compared (online, busy, vanished, offline past the boot timeout); registrations with kiln's prefix
 * that no live runner owns are removed; queued jobs kiln has a reason to doubt are re-read (`doubtedQueues`),
 * and old deliveries are pruned.
 */
import { KilnError } from '../../core/errors.ts';
import { LIVE_RUNNER_STATES } from '../../core/runner-state.ts';
import { pruneDeliveries } from '../../store/github-deliveries.ts';
import { listQueuedOfKey } from '../../store/github-jobs.ts';
import { listRunnersIn, listUnheardRunners, recentRunnerScopes, type GhRunner, type RunnerScope } from '../../store/github-runners.ts';
import type { GhRunner as GhApiRunner } from './api.ts';
import { reread } from './admission.ts';
import type { RunnerVmWrites } from './job-writes.ts';
import { runnerInstallation, runnerScope, type GitHubParts } from './parts.ts';
import { unheardWindowMs, type Provisioner } from './provisioner.ts';

/** Deliveries (payloads up to 25 MB) are kept as long as GitHub can redeliver them. */
export const DELIVERY_RETENTION_MS = 3 * 24 * 3600_000;

export interface Reconciler {
  /** `ingestedAt`: when the pass's ingest began (every delivery stored before it has been processed). */
  reconcile(ingestedAt: number): Promise<void>;
}

export function makeReconciler(p: GitHubParts, vms: RunnerVmWrites, prov: Provisioner): Reconciler {
  /** Runners whose registration vanished, since when (this leader's memory: a new leader starts the grace again). */
  const vanished = new Map<number, number>();
  return { reconcile: (ingestedAt) => reconcile(p, vms, prov, vanished, ingestedAt) };
}

async function reconcile(p: GitHubParts, vms: RunnerVmWrites, prov: Provisioner, vanished: Map<number, number>, ingestedAt: number): Promise<void> {
  const { db, api, config, log } = p;
  // One listing per registration scope (paginated, 100 a page) instead of one read per runner: the
  // reconciler's GitHub calls grow with scopes, not with runners.
  const listedAt = p.now();
  const listed = new Map<string, Map<number, GhApiRunner>>();
  const scopeKey = (s: RunnerScope) => `${s.level}:${s.owner}/${s.repo ?? ''}`.toLowerCase();
  const liveNames = new Set((await listRunnersIn(db, LIVE_RUNNER_STATES)).map((x) => x.name));
  for (const s of await recentRunnerScopes(db, p.now() - 24 * 3600_000)) {
    await p.step(`listing runners of ${s.owner}`, async () => {
      const inst = runnerInstallation({ scope: s, installationId: s.installationId });
      const all = await api.listRunners(inst, runnerScope({ scope: s }));
      listed.set(scopeKey(s), new Map(all.map((g) => [g.id, g])));
      // Registrations with kiln's prefix that no live runner owns (a crash between steps): remove them.
      for (const gh of all) {
        if (!gh.name.startsWith(`${config.runnerNamePrefix}-`) || liveNames.has(gh.name) || gh.busy) continue;
        log.warn({ runner: gh.name }, 'removing a kiln runner registration without a VM');
        await api.deleteRunner(inst, runnerScope({ scope: s }), gh.id);
      }
    });
  }
  const checked = await listRunnersIn(db, ['starting', 'online', 'busy']);
  for (const id of vanished.keys()) if (!checked.some((r) => r.id === id)) vanished.delete(id);
  for (const r of checked) {
    const inScope = listed.get(scopeKey(r.scope));
    // A scope whose listing failed, or a runner newer than the listing, waits for the next round.
    if (r.runnerId === null || !inScope || r.createdAt >= listedAt) continue;
    const gh = inScope.get(r.runnerId);
    await p.step(`checking runner ${r.name}`, async () => {
      if (!gh) {
        // After its one job GitHub removes an ephemeral runner while the runner is still exiting: give
        // its VM the idle grace to end by itself. That holds too when kiln has not heard of the job yet
        // (its in_progress delivery late): such a runner ends with its VM, not as "vanished".
        const since = vanished.get(r.id) ?? vanished.set(r.id, p.now()).get(r.id)!;
        if (p.now() - since < config.idleGraceMs) return;
        return prov.retire(r, r.job !== null ? 'its registration is gone and its VM did not end after its job' : 'its registration vanished on GitHub');
      }
      vanished.delete(r.id);
      if (gh.status === 'online') {
        if (gh.busy && r.state !== 'busy') return prov.setRunner(r, { type: 'took_job' });
        if (!gh.busy && r.state === 'starting') return prov.setRunner(r, { type: 'came_online' }, { onlineAt: p.now() });
        return;
      }
      if (gh.busy) return prov.retire(r, 'offline while busy (orphan)', { orphan: true });
      // The boot clock starts when the VM does: a runner VM still waiting for a host is not late.
      const vm = r.kilnJobId === null ? undefined : await vms.get(db, r.kilnJobId);
      if (r.state === 'starting' && vm && (vm.state === 'queued' || vm.state === 'placed')) return;
      const since = r.onlineAt ?? Date.parse(vm?.bootingAt ?? vm?.runningAt ?? new Date(r.createdAt).toISOString());
      if (p.now() - since > config.bootTimeoutMs) {
        const neverOnline = r.state === 'starting';
        await prov.retire(r, neverOnline ? 'the runner did not come online within the boot timeout' : 'the runner went offline');
        // Offline before it took a job, like never coming online, counts against the job it stood for.
        if (r.state !== 'busy') {
          await prov.runnerFailed(
            r,
            neverOnline
              ? new KilnError('vm.boot_timeout', 'the runner VM did not come online in time', { kind: 'unavailable' })
              : new KilnError('github.runner_offline', 'the runner went offline before it took a job', { kind: 'unavailable' }),
          );
        }
      }
    });
  }
  // Known-queued jobs whose record kiln has a reason to doubt (lost or late webhooks); never jobs that are
  // only waiting for a runner.
  let budget = 200;
  for (const d of doubtedQueues(await listUnheardRunners(db, p.now() - unheardWindowMs(config)), await listRunnersIn(db, ['online']), ingestedAt, p.now(), config)) {
    // Oldest first (GitHub hands out the oldest queued job first), and for unheard runners only until as many
    // jobs as there are such runners have been found taken.
    let taken = 0;
    for (const j of await listQueuedOfKey(db, d.demandKey, d.checkedBefore, budget)) {
      if (d.lookFor !== null && taken >= d.lookFor) break;
      budget--;
      await p.step(`re-checking GitHub job ${j.jobId}`, async () => {
        if (!(await reread(p, vms, j, d.why))) taken++;
      });
    }
    if (budget <= 0) break;
  }
  await p.step('pruning old deliveries', () => pruneDeliveries(db, new Date(p.now() - DELIVERY_RETENTION_MS), new Date(p.now() - 10 * DELIVERY_RETENTION_MS)));
}

/** A demand key whose queued jobs read before `checkedBefore` (ms) are to be read again, and why. */
export interface DoubtedQueue {
  demandKey: string;
  checkedBefore: number;
  why: 'unheard_runner' | 'idle_runner';
  /** Unheard runners: how many taken jobs to look for (then stop); null: read every job. */
  lookFor: number | null;
}

/** Deliveries later than this after their runner's VM ended (and later than a reconcile interval) are late. */
export const LATE_DELIVERY_MS = 5_000;

/**
 * Pure: which keys' queued jobs kiln doubts. A job only waiting for a runner is not doubted (its deliveries,
 * or GitHub's redelivery of them, say when it leaves the queue); two things are reasons:
 * - a runner of the key ended after running a job kiln has not heard of (`unheard`), and an ingest that began
 *   at least a reconcile interval, and LATE_DELIVERY_MS, after the runner's VM ended (`ingestedAt`) still
 *   brought no delivery naming it: as many of the key's queued jobs as there are such runners are taken; the
 *   jobs read before the (latest) runner ended are read again, oldest first, until that many are found;
 * - a runner of the key has been online and idle past the recheck interval: GitHub hands an idle runner any
 *   queued job of its labels, so the key's jobs not read within that interval may be gone (cancelled or
 *   taken elsewhere with their deliveries lost).
 * Either way each job is read once per reason, not once per round.
 */
export function doubtedQueues(
  unheard: readonly { demandKey: string; finishedAt: number }[],
  online: readonly Pick<GhRunner, 'demandKey' | 'onlineAt'>[],
  ingestedAt: number,
  now: number,
  c: { reconcileMs: number; recheckMs: number },
): DoubtedQueue[] {
  const out = new Map<string, DoubtedQueue>();
  const grace = Math.max(c.reconcileMs, LATE_DELIVERY_MS);
  for (const u of unheard) {
    if (u.finishedAt > ingestedAt - grace) continue;
    const d = out.get(u.demandKey);
    out.set(u.demandKey, { demandKey: u.demandKey, checkedBefore: Math.max(d?.checkedBefore ?? 0, u.finishedAt), why: 'unheard_runner', lookFor: (d?.lookFor ?? 0) + 1 });
  }
  for (const r of online) {
    if (r.onlineAt === null || now - r.onlineAt < c.recheckMs) continue;
    const before = now - c.recheckMs;
    const d = out.get(r.demandKey);
    if (!d || d.checkedBefore < before || d.lookFor !== null) out.set(r.demandKey, { demandKey: r.demandKey, checkedBefore: Math.max(before, d?.checkedBefore ?? 0), why: 'idle_runner', lookFor: null });
  }
  return [...out.values()];
}
