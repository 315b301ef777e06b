/**
 * GitHub Actions in kiln: webhook intake → per-job state and decision → demand per label set → JIT runners
 * in fresh VMs → cleanup, plus the reconciler for everything webhooks miss.
 *
 * Intake runs on every replica: verify, persist the delivery (the durable queue), answer. Everything after
 * that (processing deliveries, talking to GitHub, submitting runner VMs, reconciling) runs on the leader
 * only, one pass at a time, so GitHub side effects have one writer. A pass is idempotent: a crash between
 * any two steps leaves rows a later pass finishes.
 */
import { randomBytes } from 'node:crypto';
import { EventEmitter, once } from 'node:events';
import type { FastifyInstance } from 'fastify';
import { sql } from 'kysely';
import { Type } from '@sinclair/typebox';
import { KilnError, isKilnError, toKilnError } from '../../core/errors.ts';
import { isTerminal } from '../../core/job-state.ts';
import { getJob, insertJobs, jobStatuses, requestCancel } from '../../store/jobs.ts';
import type { GitHubJobRow, GitHubRunnerRow } from '../../store/github-schema.ts';
import type { ServerContext } from '../context.ts';
import { errorBody } from '../http/http-errors.ts';
import type { RouteDef } from '../http/routes.ts';
import { RETRYABLE, type GitHubApi, type Installation, type Scope } from './api.ts';
import type { GitHubConfig } from './config.ts';
import { WEBHOOK_PATH } from './manifest.ts';
import { makeGitHubMetrics } from './metrics.ts';
import { parseWorkflowJob, type WorkflowJobEvent } from './payload.ts';
import { advances, backoffMs, classifyLabels, forkDecision, ghStateOfAction, listed, type GhJobState } from './policy.ts';
import { verifySignature } from './signature.ts';

export interface GitHubEvents {
  /** A delivery was processed (outcome: applied, duplicate_action, ignored, refused, stale, bad_payload). */
  'delivery.processed': { deliveryId: string; outcome: string };
  'job.refused': { jobId: number; runAttempt: number; code: string; reason: string };
  /** A job kiln serves went in_progress: GitHub's created_at and in_progress times (the pickup figure). */
  'job.started': { jobId: number; runAttempt: number; labels: string[]; createdAt: Date | null; startedAt: Date | null };
  'runner.state': { name: string; state: string; reason?: string };
  'pass.done': { n: number };
}

export class GitHubEventBus {
  readonly #ee = new EventEmitter();
  constructor() {
    this.#ee.setMaxListeners(0);
  }
  emit<K extends keyof GitHubEvents>(name: K, p: GitHubEvents[K]): void {
    this.#ee.emit(name, p);
  }
  on<K extends keyof GitHubEvents>(name: K, fn: (p: GitHubEvents[K]) => void): () => void {
    this.#ee.on(name, fn);
    return () => this.#ee.off(name, fn);
  }
  async waitFor<K extends keyof GitHubEvents>(name: K, pred: (p: GitHubEvents[K]) => boolean = () => true, timeoutMs = 10_000): Promise<GitHubEvents[K]> {
    const ac = new AbortController();
    const t = setTimeout(() => ac.abort(), timeoutMs);
    try {
      for (;;) {
        const [p] = (await once(this.#ee, name, { signal: ac.signal })) as [GitHubEvents[K]];
        if (pred(p)) return p;
      }
    } catch (e) {
      if (ac.signal.aborted) throw new Error(`timed out after ${timeoutMs} ms waiting for GitHub event ${name}`);
      throw e;
    } finally {
      clearTimeout(t);
    }
  }
}

export interface GitHubServiceDeps {
  ctx: ServerContext;
  config: GitHubConfig;
  api: GitHubApi;
  isLeader(): boolean;
  /** Ask the scheduler for a pass (after submitting runner VMs). */
  kick(): void;
  /** Stop a job's VM when its agent is connected to this replica. */
  stop(hostId: number, jobId: number, attempt: number, reason: string): boolean;
  now?: () => number;
  /** How often the leader looks for work other replicas persisted (default 500 ms). */
  pollMs?: number;
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
}

/** Milliseconds of a timestamp column (a Date from the driver, or its text), keeping the milliseconds. */
const ms = (x: Date | string | null): number => (x === null ? 0 : new Date(x).getTime());

const LIVE = ['pending', 'starting', 'online', 'busy', 'stopping'] as const;
const AVAILABLE = ['pending', 'starting', 'online'] as const;
const RUNNER_ENV = 'KILN_RUNNER_JITCONFIG';
const DELIVERY_RETENTION_MS = 3 * 24 * 3600_000;

export function makeGitHubService(d: GitHubServiceDeps): GitHubService {
  const { ctx, config, api } = d;
  const db = ctx.store.db;
  const now = d.now ?? Date.now;
  const log = ctx.log.child({ part: 'github' });
  const events = new GitHubEventBus();
  const secrets = () => config.webhookSecrets.map((s) => s.reveal());
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<void> | undefined;
  let again = false;
  let paused = false;
  let stopped = false;
  let passes = 0;
  let lastReconcile = 0;
  let lastRedeliver = 0;
  const redelivered = new Map<string, number>();
  const stopTried = new Map<number, number>();
  const metrics = makeGitHubMetrics(ctx);

  // ---- intake --------------------------------------------------------------------------------------
  async function register(app: FastifyInstance): Promise<void> {
    await app.register(async (child) => {
      child.removeAllContentTypeParsers();
      child.addContentTypeParser('application/json', { parseAs: 'buffer', bodyLimit: 25 * 1024 * 1024 }, (_req, body, done) => done(null, body));
      child.addContentTypeParser('*', { parseAs: 'buffer', bodyLimit: 25 * 1024 * 1024 }, (_req, _body, done) =>
        done(new KilnError('request.unsupported_media', 'GitHub webhooks are JSON (content type application/json)'), undefined),
      );
      child.setErrorHandler((e: unknown, _req, reply) => {
        metrics.deliveries.inc({ result: 'refused' });
        const code = (e as { code?: string }).code;
        const { status, body } = errorBody(isKilnError(e) ? e : code === 'FST_ERR_CTP_BODY_TOO_LARGE' ? new KilnError('request.too_large', 'the delivery exceeds 25 MB') : e);
        if (status >= 500) log.error({ err: e }, 'webhook intake failed');
        void reply.code(status).send(body);
      });
      child.post(WEBHOOK_PATH, async (req, reply) => {
        const h = (n: string) => {
          const v = req.headers[n];
          return typeof v === 'string' && v.length > 0 ? v : undefined;
        };
        const event = h('x-github-event');
        const delivery = h('x-github-delivery');
        const signature = h('x-hub-signature-256');
        const missing = [!event && 'X-GitHub-Event', !delivery && 'X-GitHub-Delivery', !signature && 'X-Hub-Signature-256'].filter(Boolean);
        if (missing.length > 0) throw new KilnError('request.missing_header', `the delivery lacks ${missing.join(', ')}`);
        const body = req.body;
        if (!Buffer.isBuffer(body)) throw new KilnError('request.unsupported_media', 'GitHub webhooks are JSON (content type application/json)');
        if (!verifySignature(secrets(), body, signature)) {
          log.warn({ delivery, event }, 'webhook refused: bad signature');
          throw new KilnError('auth.invalid', 'the X-Hub-Signature-256 signature does not match any configured webhook secret', {
            hint: 'the App webhook secret and KILN_GITHUB_WEBHOOK_SECRET must be the same',
          });
        }
        if (event === 'ping') {
          metrics.deliveries.inc({ result: 'ping' });
          return reply.code(200).send({ ok: true });
        }
        if (event !== 'workflow_job') throw new KilnError('request.unsupported_event', `kiln handles workflow_job events, not ${event}`, { hint: 'subscribe the App to "Workflow job" only' });
        let payload: unknown;
        try {
          payload = JSON.parse(body.toString('utf8'));
        } catch {
          throw new KilnError('request.bad_json', 'the delivery body is not valid JSON');
        }
        const action = typeof (payload as { action?: unknown }).action === 'string' ? (payload as { action: string }).action : null;
        const r = await db
          .insertInto('github_deliveries')
          .values({ delivery_id: delivery!.slice(0, 200), event: event, action, hook_id: h('x-github-hook-id') ?? null, payload: body.toString('utf8') })
          .onConflict((oc) => oc.column('delivery_id').doNothing())
          .returning('delivery_id')
          .executeTakeFirst();
        if (!r) {
          metrics.deliveries.inc({ result: 'duplicate' });
          return reply.code(200).send({ duplicate: true });
        }
        metrics.deliveries.inc({ result: 'accepted' });
        kick();
        return reply.code(202).send({ accepted: true });
      });
    });
  }

  // ---- the loop ------------------------------------------------------------------------------------
  function kick(): void {
    if (stopped || paused) return;
    if (running) {
      again = true;
      return;
    }
    running = (async () => {
      try {
        do {
          again = false;
          await pass();
        } while (again && !stopped && !paused);
      } catch (e) {
        log.warn({ err: e }, 'GitHub pass failed; retrying on the next tick');
      } finally {
        running = undefined;
      }
    })();
  }

  async function pass(): Promise<void> {
    if (!d.isLeader()) return;
    await ingest();
    await check();
    await syncWithVms();
    await provision();
    const t = now();
    if (t - lastReconcile >= config.reconcileMs) {
      lastReconcile = t;
      await reconcile();
    }
    if (t - lastRedeliver >= config.redeliverMs) {
      lastRedeliver = t;
      await recoverLostDeliveries();
    }
    events.emit('pass.done', { n: ++passes });
  }

  const step = async (what: string, f: () => Promise<void>): Promise<void> => {
    try {
      await f();
    } catch (e) {
      const err = toKilnError(e);
      log.warn({ err: { code: err.code, message: err.message } }, `${what} failed; a later pass retries`);
    }
  };

  // ---- deliveries → job records --------------------------------------------------------------------
  async function ingest(): Promise<void> {
    for (;;) {
      const done = await ctx.store.withTransaction(async (tx) => {
        const rows = await tx
          .selectFrom('github_deliveries')
          .select(['delivery_id', 'payload'])
          .where('status', '=', 'pending')
          .orderBy('received_at')
          .limit(200)
          .forUpdate()
          .skipLocked()
          .execute();
        const out: { id: string; outcome: string }[] = [];
        for (const r of rows) {
          let outcome: string;
          try {
            outcome = await apply(tx, r.delivery_id, parseWorkflowJob(r.payload));
          } catch (e) {
            if (!isKilnError(e, 'github.bad_payload')) throw e;
            log.warn({ delivery: r.delivery_id, err: { code: e.code, message: e.message } }, 'delivery ignored: unreadable payload');
            outcome = 'bad_payload';
          }
          await tx.updateTable('github_deliveries').set({ status: 'done', outcome, processed_at: new Date(now()) }).where('delivery_id', '=', r.delivery_id).execute();
          out.push({ id: r.delivery_id, outcome });
        }
        return out;
      });
      for (const o of done) events.emit('delivery.processed', { deliveryId: o.id, outcome: o.outcome });
      if (done.length < 200) return;
    }
  }

  type Tx = Parameters<Parameters<typeof ctx.store.withTransaction>[0]>[0];

  function demandKey(e: { repo: string; owner: string; ownerType: string }, labelKey: string): string {
    return config.runnerLevel === 'org' && e.ownerType === 'Organization' ? `org:${e.owner.toLowerCase()}|${labelKey}` : `repo:${e.repo.toLowerCase()}|${labelKey}`;
  }

  async function apply(tx: Tx, deliveryId: string, e: WorkflowJobEvent): Promise<string> {
    const to = ghStateOfAction(e.action);
    if (!to) return 'ignored';
    const first = await tx
      .insertInto('github_job_actions')
      .values({ job_id: e.jobId, run_attempt: e.runAttempt, action: e.action, delivery_id: deliveryId })
      .onConflict((oc) => oc.columns(['job_id', 'run_attempt', 'action']).doNothing())
      .returning('job_id')
      .executeTakeFirst();
    if (!first) return 'duplicate_action';
    const at = new Date(now());
    const times = {
      ...(to === 'queued' || to === 'waiting' ? { queued_at: e.createdAt ?? at.toISOString() } : {}),
      ...(to === 'in_progress' ? { started_at: e.startedAt ?? at.toISOString(), runner_name: e.runnerName } : {}),
      ...(to === 'completed' ? { completed_at: e.completedAt ?? at.toISOString(), conclusion: e.conclusion, ...(e.runnerName ? { runner_name: e.runnerName } : {}) } : {}),
    };
    const existing = await tx.selectFrom('github_jobs').selectAll().where('job_id', '=', e.jobId).where('run_attempt', '=', e.runAttempt).forUpdate().executeTakeFirst();
    let row: GitHubJobRow;
    let outcome = 'applied';
    if (!existing) {
      const c = classifyLabels(e.labels);
      let decision: string = 'pending';
      let code: string | null = null;
      let reason: string | null = null;
      if (c.kind === 'ignore') decision = 'ignored';
      else if (c.kind === 'refuse') [decision, code, reason] = ['refused', c.code, c.reason];
      else if (!listed(config.allow, e.repo))
        [decision, code, reason] = ['refused', 'github.repo_not_allowed', `${e.repo} is not in kiln's GitHub allow-list (github.allow / KILN_GITHUB_ALLOW)`];
      row = await tx
        .insertInto('github_jobs')
        .values({
          job_id: e.jobId,
          run_attempt: e.runAttempt,
          run_id: e.runId,
          repo: e.repo,
          owner: e.owner,
          owner_type: e.ownerType,
          private: e.isPrivate,
          installation_id: e.installationId,
          labels: JSON.stringify(e.labels),
          demand_key: c.kind === 'accept' ? demandKey(e, c.labelKey) : null,
          state: to,
          decision,
          reason_code: code,
          reason,
          workflow: e.workflow,
          head_branch: e.headBranch,
          sender: e.sender,
          org: e.org,
          ...times,
        })
        .returningAll()
        .executeTakeFirstOrThrow();
      if (decision === 'ignored') outcome = 'ignored';
      if (decision === 'refused') {
        outcome = 'refused';
        log.warn({ ghJobId: e.jobId, repo: e.repo, code, reason }, 'GitHub job refused');
        events.emit('job.refused', { jobId: e.jobId, runAttempt: e.runAttempt, code: code ?? '', reason: reason ?? '' });
      }
      if (c.kind !== 'ignore') {
        await tx
          .insertInto('github_usage')
          .values({ job_id: e.jobId, run_attempt: e.runAttempt, repo: e.repo, org: e.org, sender: e.sender, labels: JSON.stringify(e.labels), workflow: e.workflow, ...pickTimes(times) })
          .onConflict((oc) => oc.columns(['job_id', 'run_attempt']).doNothing())
          .execute();
      }
    } else {
      if (!advances(existing.state as GhJobState, to)) return 'stale';
      row = await tx
        .updateTable('github_jobs')
        .set({ state: to, updated_at: at, ...times, ...(existing.installation_id === null && e.installationId ? { installation_id: e.installationId } : {}) })
        .where('job_id', '=', e.jobId)
        .where('run_attempt', '=', e.runAttempt)
        .returningAll()
        .executeTakeFirstOrThrow();
      if (existing.decision === 'ignored') outcome = 'ignored';
    }
    if (row.decision !== 'ignored' && (to === 'in_progress' || to === 'completed')) await bindRunner(tx, row, e, to);
    if (to === 'in_progress' && row.decision !== 'ignored' && row.decision !== 'refused') {
      events.emit('job.started', { jobId: e.jobId, runAttempt: e.runAttempt, labels: e.labels, createdAt: row.queued_at, startedAt: row.started_at });
    }
    return outcome;
  }

  function pickTimes(t: Record<string, unknown>): { queued_at?: string; started_at?: string; completed_at?: string; conclusion?: string | null } {
    const o: Record<string, unknown> = {};
    for (const k of ['queued_at', 'started_at', 'completed_at', 'conclusion']) if (k in t) o[k] = t[k];
    return o;
  }

  /** in_progress / completed: which runner took the job; if it is ours, bind it and fill the usage record. */
  async function bindRunner(tx: Tx, job: GitHubJobRow, e: WorkflowJobEvent, to: GhJobState): Promise<void> {
    const runner = e.runnerName ? await tx.selectFrom('github_runners').selectAll().where('name', '=', e.runnerName).executeTakeFirst() : undefined;
    const usage: Record<string, unknown> = { ...pickTimes({ ...(to === 'in_progress' ? { started_at: job.started_at } : { completed_at: job.completed_at, conclusion: e.conclusion }) }) };
    if (runner) {
      if (to === 'in_progress' && (runner.for_job_id !== e.jobId || runner.for_run_attempt !== e.runAttempt)) {
        // It took another job than the one it was started for (GitHub does not pin runners to jobs): it
        // now stands for the job it took, and the runner that stood for that job, if any, stands for the
        // one left behind, which stays in demand. (Also when this webhook arrives after the runner ended.)
        await tx
          .updateTable('github_runners')
          .set({ for_job_id: runner.for_job_id, for_run_attempt: runner.for_run_attempt })
          .where('for_job_id', '=', e.jobId)
          .where('for_run_attempt', '=', e.runAttempt)
          .where('state', 'in', [...AVAILABLE])
          .where('id', '<>', runner.id)
          .execute();
        await tx.updateTable('github_runners').set({ for_job_id: e.jobId, for_run_attempt: e.runAttempt }).where('id', '=', runner.id).execute();
      }
      if (to === 'in_progress') await tx.updateTable('github_runners').set({ job_id: e.jobId, run_attempt: e.runAttempt }).where('id', '=', runner.id).execute();
      if (to === 'in_progress' && (AVAILABLE as readonly string[]).includes(runner.state)) {
        await tx.updateTable('github_runners').set({ state: 'busy', surplus_since: null }).where('id', '=', runner.id).execute();
        await scrubJitConfig(tx, runner.kiln_job_id);
        events.emit('runner.state', { name: runner.name, state: 'busy' });
      }
      usage.runner_name = runner.name;
      if (runner.kiln_job_id !== null) {
        const kj = await getJob(tx, runner.kiln_job_id);
        usage.kiln_job_id = runner.kiln_job_id;
        if (kj) Object.assign(usage, { host_id: kj.hostId, cpus: kj.requirements.cpus, memory_bytes: kj.requirements.memoryBytes });
      }
    } else if (e.runnerName) {
      usage.runner_name = e.runnerName;
    }
    if (Object.keys(usage).length > 0) await tx.updateTable('github_usage').set(usage).where('job_id', '=', e.jobId).where('run_attempt', '=', e.runAttempt).execute();
  }

  // ---- checks against GitHub before any VM -------------------------------------------------------
  const instOf = (j: Pick<GitHubJobRow, 'installation_id' | 'repo'>): Installation => {
    const [owner = '', repo = ''] = j.repo.split('/');
    return { id: j.installation_id ?? 0, owner, repo };
  };

  async function refuse(j: GitHubJobRow, code: string, reason: string): Promise<void> {
    await db.updateTable('github_jobs').set({ decision: 'refused', reason_code: code, reason, updated_at: new Date(now()) }).where('job_id', '=', j.job_id).where('run_attempt', '=', j.run_attempt).execute();
    log.warn({ ghJobId: j.job_id, repo: j.repo, code, reason }, 'GitHub job refused');
    events.emit('job.refused', { jobId: j.job_id, runAttempt: j.run_attempt, code, reason });
  }

  /** GET job: still queued? Moves the record forward when GitHub knows more than the webhooks told. */
  async function stillQueued(j: GitHubJobRow): Promise<boolean> {
    const gj = await api.getJob(instOf(j), j.job_id);
    const at = new Date(now());
    if (!gj) {
      await db.updateTable('github_jobs').set({ state: 'completed', checked_at: at, reason: 'the job no longer exists on GitHub' }).where('job_id', '=', j.job_id).where('run_attempt', '=', j.run_attempt).execute();
      return false;
    }
    const st = ghStateOfAction(gj.status);
    const forward = st && st !== 'waiting' && advances(j.state as GhJobState, st) ? { state: st } : {};
    await db.updateTable('github_jobs').set({ checked_at: at, ...forward }).where('job_id', '=', j.job_id).where('run_attempt', '=', j.run_attempt).execute();
    return gj.status === 'queued';
  }

  async function check(): Promise<void> {
    const rows = await db
      .selectFrom('github_jobs')
      .selectAll()
      .where('state', '=', 'queued')
      .where('decision', '=', 'pending')
      .where((w) => w.or([w('checked_at', 'is', null), w('checked_at', '<', new Date(now() - config.recheckMs))]))
      .orderBy('created_at')
      .limit(500)
      .execute();
    for (const j of rows) {
      await step(`checking GitHub job ${j.job_id}`, async () => {
        if (j.installation_id === null) return refuse(j, 'github.no_installation', 'the delivery did not come through the GitHub App (no installation id)');
        if (!j.private && !listed(config.forkPrAllowed, j.repo)) {
          const run = await api.getRun(instOf(j), j.run_id);
          const f = forkDecision({ repo: j.repo, isPrivate: j.private, headRepo: run?.headRepo ?? null, forkPrAllowed: config.forkPrAllowed });
          if (!f.ok) return refuse(j, f.code, f.reason);
        }
        if (await stillQueued(j)) {
          await db.updateTable('github_jobs').set({ decision: 'accepted', updated_at: new Date(now()) }).where('job_id', '=', j.job_id).where('run_attempt', '=', j.run_attempt).execute();
        }
      });
    }
  }

  // ---- runners and their VMs ------------------------------------------------------------------------
  const scopeOf = (r: Pick<GitHubRunnerRow, 'scope' | 'owner' | 'repo'>): Scope => ({ level: r.scope === 'org' ? 'org' : 'repo', owner: r.owner, repo: r.repo });
  const runnerInst = (r: GitHubRunnerRow): Installation => {
    const [owner = r.owner, repo = r.repo ?? ''] = (r.repo ? `${r.owner}/${r.repo}` : r.owner).split('/');
    return { id: r.installation_id, owner, repo };
  };

  async function setRunner(r: GitHubRunnerRow, state: string, fields: Record<string, unknown> = {}, reason?: string): Promise<void> {
    await db.updateTable('github_runners').set({ state, ...fields, ...(state === 'gone' ? { ended_at: new Date(now()) } : {}) }).where('id', '=', r.id).execute();
    if (state === 'online' || state === 'busy' || state === 'gone') await scrubJitConfig(db, r.kiln_job_id);
    if (state !== r.state) {
      log.info({ runner: r.name, from: r.state, to: state, ...(reason ? { reason } : {}) }, 'runner state');
      events.emit('runner.state', { name: r.name, state, ...(reason ? { reason } : {}) });
    }
  }

  /**
   * The JIT config is a credential that lives in the runner VM's job env only until the runner has used it
   * (online, busy) or will never use it (gone); then it is removed from the store.
   */
  async function scrubJitConfig(q: typeof db | Tx, kilnJobId: number | null): Promise<void> {
    if (kilnJobId === null) return;
    await sql`UPDATE jobs SET env = env - ${RUNNER_ENV}::text WHERE id = ${kilnJobId}`.execute(q);
  }

  async function cancelVm(kilnJobId: number | null, reason: string): Promise<void> {
    if (kilnJobId === null) return;
    const r = await requestCancel(db, kilnJobId);
    if (!r) return;
    if (r.job.state === 'cancelled' && r.stopHost === null) ctx.events.emit('job.state', { job: r.job, from: 'queued', to: 'cancelled' });
    if (r.stopHost !== null) d.stop(r.stopHost, r.job.id, r.job.attempt, reason);
  }

  /**
   * Takes a runner out: its registration first (so GitHub gives it no job meanwhile; 404 is fine), then its
   * VM. A busy registration (422) means GitHub handed it a job just now: while its VM lives the runner is
   * kept (busy); when the VM is already gone the removal is retried later.
   */
  async function retire(r: GitHubRunnerRow, reason: string, o: { orphan?: boolean } = {}): Promise<void> {
    if (r.state !== 'stopping') await setRunner(r, 'stopping', { last_error: reason }, reason);
    if (r.runner_id !== null) {
      try {
        await api.deleteRunner(runnerInst(r), scopeOf(r), r.runner_id);
      } catch (e) {
        if (!isKilnError(e, 'github.runner_busy')) throw e;
        // An orphan (offline but busy) loses its VM now; its registration goes once GitHub lets go.
        if (o.orphan) return cancelVm(r.kiln_job_id, reason);
        const vm = r.kiln_job_id === null ? undefined : await getJob(db, r.kiln_job_id);
        if (vm && !isTerminal(vm.state) && !vm.cancelRequested) await setRunner({ ...r, state: 'stopping' }, 'busy', { last_error: null }, 'busy on GitHub; kept');
        return;
      }
    }
    await cancelVm(r.kiln_job_id, reason);
    await setRunner({ ...r, state: 'stopping' }, 'gone');
    stopTried.delete(r.id);
  }

  /** VMs that ended take their runner with them; runners that are gone take their VM with them. */
  async function syncWithVms(): Promise<void> {
    const rows = await db.selectFrom('github_runners').selectAll().where('state', 'in', [...LIVE]).execute();
    const ids = rows.map((r) => r.kiln_job_id).filter((x): x is number => x !== null);
    const st = new Map((await jobStatuses(db, ids)).map((s) => [s.id, s]));
    for (const r of rows) {
      await step(`cleaning up runner ${r.name}`, async () => {
        const kj = r.kiln_job_id === null ? undefined : st.get(r.kiln_job_id);
        if (r.state === 'stopping') {
          // A busy registration (422) is retried at the reconciler's pace, not on every pass.
          if (now() - (stopTried.get(r.id) ?? 0) < config.reconcileMs) return;
          stopTried.set(r.id, now());
          return retire(r, r.last_error ?? 'cleanup');
        }
        if (kj && isTerminal(kj.state)) return retire(r, `its VM ended (${kj.state})`);
        if (r.state === 'pending' && now() - ms(r.created_at) > 60_000 && r.runner_id === null) {
          // A pass died between persisting the name and registering: nothing on GitHub under this name yet
          // (or a 409 recovery handles it); let provisioning start over.
          return setRunner(r, 'gone', { last_error: 'registration interrupted' });
        }
      });
    }
    // VMs whose runner is gone (the reconciler removed it): stop them.
    const orphans = await db
      .selectFrom('github_runners')
      .innerJoin('jobs', 'jobs.id', 'github_runners.kiln_job_id')
      .select(['github_runners.kiln_job_id', 'github_runners.name'])
      .where('github_runners.state', '=', 'gone')
      .where('jobs.state', 'in', ['queued', 'placed', 'booting', 'running'])
      .where('jobs.cancel_requested', '=', false)
      .execute();
    for (const o of orphans) await step(`stopping the VM of ${o.name}`, () => cancelVm(o.kiln_job_id, 'its runner is gone'));
  }

  async function provision(): Promise<void> {
    const t = new Date(now());
    const demand = await db
      .selectFrom('github_jobs')
      .selectAll()
      .where('state', '=', 'queued')
      .where('decision', '=', 'accepted')
      .where('failures', '<', config.maxFailures)
      .where((w) => w.or([w('next_attempt_at', 'is', null), w('next_attempt_at', '<=', t)]))
      .orderBy('created_at')
      .execute();
    const live = await db.selectFrom('github_runners').selectAll().where('state', 'in', [...LIVE]).execute();
    const byKey = new Map<string, GitHubJobRow[]>();
    for (const j of demand) if (j.demand_key) (byKey.get(j.demand_key) ?? byKey.set(j.demand_key, []).get(j.demand_key)!).push(j);
    const supply = new Map<string, GitHubRunnerRow[]>();
    for (const r of live) if ((AVAILABLE as readonly string[]).includes(r.state)) (supply.get(r.demand_key) ?? supply.set(r.demand_key, []).get(r.demand_key)!).push(r);
    // Jobs an available runner already stands for; a busy runner stands for the job it took.
    const claimed = new Set(live.filter((r) => r.for_job_id !== null).map((r) => `${r.for_job_id}/${r.for_run_attempt}`));
    let budget = config.maxRunners - live.length;

    // Surplus first: runners no demand needs. Not yet online: out at once; idle online: after the grace.
    for (const [key, runners] of supply) {
      const want = byKey.get(key)?.length ?? 0;
      const surplus = runners.length - want;
      if (surplus <= 0) {
        for (const r of runners) if (r.surplus_since) await db.updateTable('github_runners').set({ surplus_since: null }).where('id', '=', r.id).execute();
        continue;
      }
      const order = [...runners].sort((a, b) => rank(a) - rank(b) || ms(b.created_at) - ms(a.created_at));
      for (const r of order.slice(0, surplus)) {
        await step(`retiring surplus runner ${r.name}`, async () => {
          if (r.state !== 'online') return retire(r, 'no queued job needs it any more');
          if (!r.surplus_since) return void (await db.updateTable('github_runners').set({ surplus_since: t }).where('id', '=', r.id).execute());
          if (now() - ms(r.surplus_since) < config.idleGraceMs) return;
          const gh = r.runner_id === null ? null : await api.getRunner(runnerInst(r), scopeOf(r), r.runner_id);
          if (gh?.busy) return setRunner(r, 'busy');
          return retire(r, 'idle past the grace period with no queued job for it');
        });
      }
    }

    for (const [key, jobs] of byKey) {
      let need = jobs.length - (supply.get(key)?.length ?? 0);
      for (const j of jobs) {
        if (need <= 0) break;
        if (budget <= 0) {
          log.debug({ key }, 'runner capacity full; queued jobs wait');
          return;
        }
        if (claimed.has(`${j.job_id}/${j.run_attempt}`)) continue;
        await step(`provisioning a runner for GitHub job ${j.job_id}`, async () => {
          if (!j.checked_at || now() - ms(j.checked_at) > 10_000) {
            if (!(await stillQueued(j))) return;
          }
          need--;
          budget--;
          claimed.add(`${j.job_id}/${j.run_attempt}`);
          await startRunner(j);
        });
      }
    }
  }

  const rank = (r: GitHubRunnerRow) => (r.state === 'pending' ? 0 : r.state === 'starting' ? 1 : 2);

  async function startRunner(j: GitHubJobRow): Promise<void> {
    const c = classifyLabels(j.labels);
    if (c.kind !== 'accept') return;
    const [owner = j.owner, repoName = ''] = j.repo.split('/');
    const level: Scope['level'] = j.demand_key?.startsWith('org:') ? 'org' : 'repo';
    const scope: Scope = { level, owner, repo: level === 'org' ? null : repoName };
    const inst = instOf(j);
    let name = `${config.runnerNamePrefix}-${randomBytes(6).toString('hex')}`;
    // Persist the intended name before calling GitHub: a lost answer then leaves a row the 409 path finds.
    const row = await db
      .insertInto('github_runners')
      .values({
        name,
        demand_key: j.demand_key ?? '',
        scope: level,
        owner,
        repo: scope.repo,
        installation_id: j.installation_id ?? 0,
        labels: JSON.stringify(c.runnerLabels),
        for_job_id: j.job_id,
        for_run_attempt: j.run_attempt,
        state: 'pending',
      })
      .returningAll()
      .executeTakeFirstOrThrow();
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
          name = `${config.runnerNamePrefix}-${randomBytes(6).toString('hex')}`;
          await db.updateTable('github_runners').set({ name }).where('id', '=', row.id).execute();
          log.info({ runner: name }, 'runner name taken on GitHub; retrying under a new name');
          continue;
        }
        const err = toKilnError(e);
        await setRunner(row, 'gone', { last_error: `${err.code}: ${err.message}` }, err.message);
        await failAttempt(j, err);
        return;
      }
    }
    const [kilnJob] = await insertJobs(db, [
      {
        tenant: config.tenant,
        requirements: c.requirements,
        labels: j.labels,
        image: config.runnerImage,
        command: config.runnerCommand,
        env: { [RUNNER_ENV]: jit.encodedJitConfig, KILN_RUNNER_NAME: name },
        timeoutMs: config.runnerTimeoutMs,
        network: 'user',
        priority: 0,
      },
    ]);
    if (!kilnJob) throw new KilnError('github.submit_failed', 'the runner VM could not be queued', { kind: 'internal' });
    await db.updateTable('github_runners').set({ runner_id: jit.runnerId, kiln_job_id: kilnJob.id, state: 'starting' }).where('id', '=', row.id).execute();
    ctx.events.emit('job.submitted', { job: kilnJob });
    events.emit('runner.state', { name, state: 'starting' });
    log.info({ runner: name, ghJobId: j.job_id, jobId: kilnJob.id, labels: c.runnerLabels }, 'runner VM queued');
    d.kick();
  }

  async function failAttempt(j: Pick<GitHubJobRow, 'job_id' | 'run_attempt' | 'failures'>, err: KilnError): Promise<void> {
    const failures = j.failures + 1;
    const retry = RETRYABLE.has(err.code) || err.kind === 'unavailable' || err.code === 'vm.boot_timeout';
    const next = new Date(now() + backoffMs(failures, config.backoffBaseMs, config.backoffMaxMs));
    await db
      .updateTable('github_jobs')
      .set({ failures, next_attempt_at: next, reason_code: err.code, reason: err.message })
      .where('job_id', '=', j.job_id)
      .where('run_attempt', '=', j.run_attempt)
      .execute();
    if (!retry || failures >= config.maxFailures) {
      const code = failures >= config.maxFailures ? 'github.provision_failed' : err.code;
      const reason = `no runner could be started for this job after ${failures} attempt(s): ${err.message}`;
      await db.updateTable('github_jobs').set({ decision: 'refused', reason_code: code, reason }).where('job_id', '=', j.job_id).where('run_attempt', '=', j.run_attempt).execute();
      log.error({ ghJobId: j.job_id, code, reason }, 'GitHub job given up');
      events.emit('job.refused', { jobId: j.job_id, runAttempt: j.run_attempt, code, reason });
    }
  }

  // ---- the reconciler -------------------------------------------------------------------------------
  async function reconcile(): Promise<void> {
    const rows = await db.selectFrom('github_runners').selectAll().where('state', 'in', ['starting', 'online', 'busy']).execute();
    for (const r of rows) {
      if (r.runner_id === null) continue;
      await step(`checking runner ${r.name}`, async () => {
        const gh = await api.getRunner(runnerInst(r), scopeOf(r), r.runner_id!);
        if (!gh) {
          // After its one job GitHub removes an ephemeral runner while the runner is still exiting: give
          // its VM the idle grace to end by itself. An idle runner that vanished loses its VM at once.
          if (r.job_id !== null) {
            if (!r.surplus_since) return void (await db.updateTable('github_runners').set({ surplus_since: new Date(now()) }).where('id', '=', r.id).execute());
            if (now() - ms(r.surplus_since) < config.idleGraceMs) return;
            return retire(r, 'its registration is gone and its VM did not end after its job');
          }
          return retire(r, 'its registration vanished on GitHub');
        }
        if (gh.status === 'online') {
          if (gh.busy && r.state !== 'busy') return setRunner(r, 'busy');
          if (!gh.busy && r.state === 'starting') return setRunner(r, 'online', { online_at: new Date(now()) });
          return;
        }
        if (gh.busy) return retire(r, 'offline while busy (orphan)', { orphan: true });
        // The boot clock starts when the VM does: a runner VM still waiting for a host is not late.
        const vm = r.kiln_job_id === null ? undefined : await getJob(db, r.kiln_job_id);
        if (r.state === 'starting' && vm && (vm.state === 'queued' || vm.state === 'placed')) return;
        const since = r.online_at ? ms(r.online_at) : ms(vm?.bootingAt ?? vm?.runningAt ?? r.created_at);
        if (now() - since > config.bootTimeoutMs) {
          const neverOnline = r.state === 'starting';
          await retire(r, neverOnline ? 'the runner did not come online within the boot timeout' : 'the runner went offline');
          if (neverOnline && r.for_job_id !== null) {
            const j = await db.selectFrom('github_jobs').select(['job_id', 'run_attempt', 'failures']).where('job_id', '=', r.for_job_id).where('run_attempt', '=', r.for_run_attempt ?? 1).executeTakeFirst();
            if (j) await failAttempt(j, new KilnError('vm.boot_timeout', 'the runner VM did not come online in time', { kind: 'unavailable' }));
          }
        }
      });
    }
    // Registrations with kiln's prefix that no live row owns (a crash between steps): remove them.
    const scopes = await db
      .selectFrom('github_runners')
      .select(['scope', 'owner', 'repo', 'installation_id'])
      .distinct()
      .where('created_at', '>', new Date(now() - 24 * 3600_000))
      .execute();
    const liveNames = new Set((await db.selectFrom('github_runners').select('name').where('state', 'in', [...LIVE]).execute()).map((x) => x.name));
    for (const s of scopes) {
      await step(`listing runners of ${s.owner}`, async () => {
        const inst: Installation = { id: s.installation_id, owner: s.owner, repo: s.repo ?? '' };
        for (const gh of await api.listRunners(inst, scopeOf(s))) {
          if (!gh.name.startsWith(`${config.runnerNamePrefix}-`) || liveNames.has(gh.name) || gh.busy) continue;
          log.warn({ runner: gh.name }, 'removing a kiln runner registration without a VM');
          await api.deleteRunner(inst, scopeOf(s), gh.id);
        }
      });
    }
    // Known-queued jobs: GitHub may have moved on without telling us (lost webhooks).
    const stale = await db
      .selectFrom('github_jobs')
      .selectAll()
      .where('state', '=', 'queued')
      .where('decision', '=', 'accepted')
      .where('checked_at', '<', new Date(now() - config.recheckMs))
      .limit(200)
      .execute();
    for (const j of stale) await step(`re-checking GitHub job ${j.job_id}`, async () => void (await stillQueued(j)));
    // Deliveries (payloads up to 25 MB) are kept as long as GitHub can redeliver them; the per-action keys
    // that dedupe across hooks, longer.
    await step('pruning old deliveries', async () => {
      await db.deleteFrom('github_deliveries').where('status', '=', 'done').where('received_at', '<', new Date(now() - DELIVERY_RETENTION_MS)).execute();
      await db.deleteFrom('github_job_actions').where('at', '<', new Date(now() - 10 * DELIVERY_RETENTION_MS)).execute();
    });
  }

  /** Deliveries GitHub failed to make (kiln down, network) are asked for again; GitHub does not retry. */
  async function recoverLostDeliveries(): Promise<void> {
    await step('recovering lost webhooks', async () => {
      const failed = await api.listFailedDeliveries(now() - DELIVERY_RETENTION_MS);
      const wanted = failed.filter((f) => f.event === 'workflow_job');
      if (wanted.length === 0) return;
      const have = new Set(
        (await db.selectFrom('github_deliveries').select('delivery_id').where('delivery_id', 'in', [...new Set(wanted.map((w) => w.guid))]).execute()).map((x) => x.delivery_id),
      );
      for (const f of wanted) {
        if (have.has(f.guid) || now() - (redelivered.get(f.guid) ?? 0) < config.redeliverMs * 5) continue;
        redelivered.set(f.guid, now());
        log.info({ delivery: f.guid, action: f.action }, 'asking GitHub to redeliver a lost webhook');
        await api.redeliver(f.id);
      }
    });
  }

  // ---- API: decisions, runners, usage ---------------------------------------------------------------
  const iso = (x: Date | string | null) => (x === null ? null : new Date(x).toISOString());
  const routes: RouteDef[] = [
    {
      method: 'GET',
      url: '/v1/github/jobs',
      tag: 'github',
      summary: "GitHub jobs kiln has seen, with kiln's decision (accepted, ignored, refused and why)",
      permission: 'read',
      schema: {
        querystring: Type.Object(
          { decision: Type.Optional(Type.String({ enum: ['pending', 'accepted', 'ignored', 'refused'] })), repo: Type.Optional(Type.String()), limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000 })) },
          { additionalProperties: false },
        ),
      },
      async handler(req) {
        const q = req.query as { decision?: string; repo?: string; limit?: number };
        let s = db.selectFrom('github_jobs').selectAll().orderBy('created_at', 'desc').limit(q.limit ?? 100);
        if (q.decision) s = s.where('decision', '=', q.decision);
        if (q.repo) s = s.where('repo', '=', q.repo);
        const rows = await s.execute();
        return {
          jobs: rows.map((j) => ({
            jobId: j.job_id,
            runAttempt: j.run_attempt,
            runId: j.run_id,
            repo: j.repo,
            labels: j.labels,
            state: j.state,
            decision: j.decision,
            reason: j.reason_code ? { code: j.reason_code, message: j.reason ?? '' } : null,
            runnerName: j.runner_name,
            workflow: j.workflow,
            failures: j.failures,
          })),
        };
      },
    },
    {
      method: 'GET',
      url: '/v1/github/runners',
      tag: 'github',
      summary: "kiln's JIT runners: state, labels, VM (kiln job), the GitHub job they ran",
      permission: 'read',
      schema: { querystring: Type.Object({ all: Type.Optional(Type.Boolean()) }, { additionalProperties: false }) },
      async handler(req) {
        const all = (req.query as { all?: boolean }).all === true;
        let s = db.selectFrom('github_runners').selectAll().orderBy('id', 'desc').limit(1000);
        if (!all) s = s.where('state', 'in', [...LIVE]);
        return {
          runners: (await s.execute()).map((r) => ({
            name: r.name,
            state: r.state,
            scope: r.scope === 'org' ? r.owner : `${r.owner}/${r.repo ?? ''}`,
            labels: r.labels,
            runnerId: r.runner_id,
            kilnJobId: r.kiln_job_id,
            ghJobId: r.job_id,
            lastError: r.last_error,
            createdAt: iso(r.created_at),
            endedAt: iso(r.ended_at),
          })),
        };
      },
    },
    {
      method: 'GET',
      url: '/v1/github/usage',
      tag: 'github',
      summary: 'Usage records per GitHub job: repository, organization, sender, labels, workflow, times, host, VM size, conclusion',
      permission: 'read',
      schema: {
        querystring: Type.Object(
          { repo: Type.Optional(Type.String()), org: Type.Optional(Type.String()), limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 10000 })) },
          { additionalProperties: false },
        ),
      },
      async handler(req) {
        const q = req.query as { repo?: string; org?: string; limit?: number };
        let s = db.selectFrom('github_usage').selectAll().orderBy('queued_at', 'desc').limit(q.limit ?? 1000);
        if (q.repo) s = s.where('repo', '=', q.repo);
        if (q.org) s = s.where('org', '=', q.org);
        return {
          usage: (await s.execute()).map((u) => ({
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
          })),
        };
      },
    },
  ];

  let offJobState: (() => void) | undefined;
  return {
    events,
    routes,
    register,
    pass,
    start() {
      const poll = d.pollMs ?? 500;
      timer = setInterval(() => kick(), poll);
      offJobState = ctx.events.on('job.state', (e) => {
        if (e.job.tenant === config.tenant && isTerminal(e.to)) kick();
      });
      kick();
    },
    async stop() {
      stopped = true;
      clearInterval(timer);
      offJobState?.();
      while (running) await running;
    },
    async pause() {
      paused = true;
      while (running) await running;
    },
    resume() {
      paused = false;
      kick();
    },
  };
}
