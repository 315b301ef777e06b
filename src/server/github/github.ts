/**
 * GitHub Actions in kiln, stage by stage (docs/ARCHITECTURE.md, "GitHub Actions"):
 *   intake.ts      signature, store the delivery, 202 (every replica)
 *   ingest.ts      deliveries → job records; labels and allow-list
 *   admission.ts   checks against GitHub (installation, fork PR, still queued); re-reads
 *   planner.ts     pure: demand, runners, budget, now → start / surplus / retire
 *   provisioner.ts carries the plan out; runner state changes; failures, backoff and give-up
 *   reconciler.ts  what webhooks miss: runners read from GitHub, strays, stale jobs, pruning
 *   redelivery.ts  lost deliveries asked for again
 *   routes.ts      /v1/github/jobs, runners, usage
 * This file wires them and runs them on the server's loop helper (../loop.ts): everything after intake runs on the leader only, one pass at a
 * time, so GitHub side effects have one writer. A pass is idempotent: a crash between any two steps leaves
 * rows a later pass finishes.
 */
import type { FastifyInstance } from 'fastify';
import { isTerminal } from '../../core/job-state.ts';
import type { ServerContext } from '../context.ts';
import type { RouteDef } from '../http/routes.ts';
import { admitJobs, reread } from './admission.ts';
import type { GitHubApi } from './api.ts';
import { withApiBudget } from './api-budget.ts';
import type { GitHubConfig } from './config.ts';
import type { GitHubEventBus } from './events.ts';
import type { JobCommands } from '../jobs/job-commands.ts';
import { ingestDeliveries } from './ingest.ts';
import { registerWebhook } from './intake.ts';
import { makeRunnerVmWrites } from './job-writes.ts';
import { makeGitHubMetrics } from './metrics.ts';
import { jobInstallation, makeStep, type GitHubParts } from './parts.ts';
import { cacheWriteCandidate, cacheWriteDecision, type CacheTrustInput, type RefKinds } from './policy.ts';
import { getGhJob } from '../../store/github-jobs.ts';
import { getRunnerByKilnJob } from '../../store/github-runners.ts';
import { makeProvisioner } from './provisioner.ts';
import { makeReconciler } from './reconciler.ts';
import { makeRedelivery } from './redelivery.ts';
import { githubRoutes } from './routes.ts';
import { makeLoop } from '../loop.ts';

export { GitHubEventBus, type GitHubEvents } from './events.ts';

export interface GitHubServiceDeps {
  ctx: ServerContext;
  config: GitHubConfig;
  api: GitHubApi;
  /** Whether this replica is the leader (GitHub's work runs on the leader only). */
  leader: { isLeader(): boolean };
  /** The door for job changes: runner VMs are submitted, cancelled and scrubbed through it. */
  jobs: JobCommands;
  now?: () => number;
  /** How often the leader looks for work other replicas persisted (default 500 ms). */
  pollMs?: number;
  /**
   * How long a cache.ask waits for kiln to learn which GitHub job the runner ran, when the job's in_progress
   * delivery is not in yet (default 2 min; the agent itself waits 5 min for the answer).
   */
  cacheBindWaitMs?: number;
}

export interface GitHubService {
  readonly events: GitHubEventBus;
  readonly routes: RouteDef[];
  register(app: FastifyInstance): Promise<void>;
  start(): void;
  stop(): Promise<void>;
  /** One full pass (tests call it; the loop calls it on kicks and timers). */
  pass(): Promise<void>;
  /** Holds the loop and waits for a pass in flight (tests: let a burst land before processing). */
  pause(): Promise<void>;
  resume(): void;
  /** May runner VM `kilnJobId` commit its cache? Decided from the GitHub job the runner took (docs/caches.md). */
  cacheTrust(kilnJobId: number): Promise<{ write: boolean; reason?: string; ref?: string; commit?: string }>;
}

export function makeGitHubService(d: GitHubServiceDeps): GitHubService {
  const { ctx, config } = d;
  const now = d.now ?? Date.now;
  const log = ctx.log.child({ part: 'github' });
  const events = ctx.events;
  const metrics = makeGitHubMetrics(ctx);
  const api = withApiBudget(d.api, { perMinute: config.apiCallsPerMinute, now, log, metrics, events });
  const p: GitHubParts = { ctx, db: ctx.store.db, config, api, log, events, metrics, now, step: makeStep(log) };
  const vms = makeRunnerVmWrites(ctx, d.jobs);
  const prov = makeProvisioner(p, vms);
  const redelivery = makeRedelivery(p);
  const reconciler = makeReconciler(p, vms, prov);

  let timer: NodeJS.Timeout | undefined;
  let passes = 0;
  let lastReconcile = 0;
  let lastRedeliver = 0;
  // The server's one loop shape (../loop.ts): kicks during a pass coalesce into one more pass; a failed pass
  // is logged and the next kick or tick tries again.
  const loop = makeLoop(() => pass(), { onError: (e) => log.warn({ err: e }, 'GitHub pass failed; retrying on the next tick') });
  const kick = (): void => loop.kick();

  async function pass(): Promise<void> {
    if (!d.leader.isLeader()) return;
    const ingestedAt = now();
    await ingestDeliveries(p, vms);
    await admitJobs(p, vms);
    await prov.syncWithVms();
    await prov.provision();
    const t = now();
    if (t - lastReconcile >= config.reconcileMs) {
      lastReconcile = t;
      await reconciler.reconcile(ingestedAt);
    }
    if (t - lastRedeliver >= config.redeliverMs) {
      lastRedeliver = t;
      await redelivery.recoverLostDeliveries();
    }
    events.emit('pass.done', { n: ++passes });
  }

  let offJobState: (() => void) | undefined;
  return {
    events,
    routes: githubRoutes(ctx.store.db, config.tenant),
    register: (app) => registerWebhook(app, p, kick),
    pass,
    start() {
      timer = setInterval(kick, d.pollMs ?? 500);
      offJobState = ctx.events.on('job.state', (e) => {
        if (e.job.tenant === config.tenant && isTerminal(e.to)) kick();
      });
      loop.start();
    },
    async stop() {
      clearInterval(timer);
      offJobState?.();
      await loop.stop();
    },
    pause: () => loop.pause(),
    resume: () => loop.resume(),
    async cacheTrust(kilnJobId) {
      try {
        return await decideCacheTrust(kilnJobId);
      } catch (e) {
        // GitHub failing (or the store) is a no: the copy is discarded, the job itself is not failed by it.
        const reason = `the trust check failed: ${(e as Error).message}`.slice(0, 500);
        log.info({ kilnJobId, write: false, reason }, 'cache write decided');
        return { write: false, reason };
      }
    },
  };

  async function decideCacheTrust(kilnJobId: number): Promise<{ write: boolean; reason?: string; ref?: string; commit?: string }> {
    let r = await getRunnerByKilnJob(p.db, kilnJobId);
    if (!r) return { write: false, reason: 'the VM is not a GitHub runner kiln knows' };
    if (!r.job) {
      // A short job can end before its in_progress delivery is ingested (or GitHub delivers it late): read
      // the job the runner stood for from GitHub (that binds it if this runner took it), then wait, bounded,
      // for the binding a delivery brings (a runner that took another job is bound only by that job's).
      if (r.forJob) {
        const fj = await getGhJob(p.db, r.forJob);
        if (fj && fj.state === 'queued') await reread(p, vms, fj, 'cache_trust').catch((e: unknown) => log.warn({ err: e }, 'reading the job a runner stood for failed'));
      }
      const end = Date.now() + (d.cacheBindWaitMs ?? 120_000);
      for (r = await getRunnerByKilnJob(p.db, kilnJobId); r && !r.job && Date.now() < end; r = await getRunnerByKilnJob(p.db, kilnJobId)) {
        kick();
        await new Promise((w) => setTimeout(w, 250));
      }
      if (!r?.job) return { write: false, reason: 'kiln has not learnt which GitHub job the runner ran' };
    }
    const j = await getGhJob(p.db, r.job);
    if (!j) return { write: false, reason: 'the GitHub job the runner ran is not recorded' };
    const inst = jobInstallation(j);
    const [run, defaultBranch] = await Promise.all([api.getRun(inst, j.runId), api.getDefaultBranch(inst)]);
    const input: CacheTrustInput = {
      repo: j.repo,
      event: run?.event ?? null,
      headRepo: run?.headRepo ?? null,
      headBranch: run?.headBranch ?? null,
      defaultBranch,
      decision: j.decision,
      extraBranches: config.cacheWriteBranches,
      tagPatterns: config.cacheWriteTags,
    };
    const c = cacheWriteCandidate(input);
    // GitHub's run does not say whether head_branch names a branch or a tag: the repository's refs do.
    const refs: RefKinds = { branch: null, tag: null };
    if (c.write === 'if-ref') {
      const errors: string[] = [];
      const look = (ref: string) => api.refExists(inst, ref).catch((e: unknown) => (errors.push((e as Error).message), null));
      [refs.branch, refs.tag] = await Promise.all([c.name === defaultBranch ? true : look(`heads/${c.name}`), look(`tags/${c.name}`)]);
      if (errors.length > 0) refs.error = errors.join('; ');
    }
    const w = cacheWriteDecision(input, refs);
    log.info({ runner: r.name, ghJobId: j.jobId, write: w.write, ...(w.write ? { ref: w.ref } : { reason: w.reason }) }, 'cache write decided');
    return w.write ? { write: true, ref: w.ref, ...(run?.headSha ? { commit: run.headSha } : {}) } : { write: false, reason: w.reason };
  }
}
