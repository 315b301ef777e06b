/**
 * The one door for job changes. Every command that changes a job (submit, place, phases, results, cancel,
 * lose, time out, requeue, scrubbing a credential from its env) goes through here: this module is the only
 * caller of the store's job writes, the only emitter of job events (`job.submitted`, `job.placed`,
 * `job.state`, `job.stop`) and the only place that counts job metrics. The rules themselves live in the pure
 * state machine (core/job-state.ts), which the store's statements derive their legal source states from.
 *
 * Callers: the HTTP routes (submit, cancel), the agent gateway and its writers (phases, results, jobs lost
 * on reconnect), the scheduler (placements), the leader (lost hosts, overdue jobs) and GitHub (runner VMs).
 * Who acts on a change learns of it from the events: the scheduler kicks a pass on `job.submitted`, the
 * gateway sends `stop` to a connected host on `job.stop`.
 */
import type { CacheOutcomeMsg, JobResultMsg } from '../../core/agent-protocol.ts';
import { KilnError } from '../../core/errors.ts';
import type { Job, JobSpec } from '../../core/job.ts';
import type { JobState } from '../../core/job-state.ts';
import type { StartedTimes } from '../../core/timings.ts';
import {
  applyPhases,
  insertJobs,
  jobStatuses,
  loseJob,
  markPlaced,
  recordExits,
  removeJobEnv,
  setCacheAnswer,
  setCacheOutcome,
  requestCancel,
  transitionJob,
  transitionJobs,
  type ExitChange,
  type PhaseUpdate,
  type PlacedJob,
} from '../../store/jobs.ts';
import type { Db, Tx } from '../../store/store.ts';
import type { CacheAnswerRow } from '../../store/schema.ts';
import { submitOnce } from '../../store/submissions.ts';
import type { ServerContext } from '../context.ts';
import { makeGroupCommit } from '../group-commit.ts';
import { exitEvent, resultEvent } from './result-event.ts';

/** What a stored result changed: the job's new state (what its events and logs need) and the state it left. */
export type ResultChange = ExitChange;

/** A placement as the scheduler carried it out: `launched` when its host got the `launch` message. */
export interface Placement {
  jobId: number;
  attempt: number;
  hostId: number;
  latencyMs: number;
  launched: boolean;
}

/** Env keys that are credentials: never served back by the API, removed from the store once used. */
export const SECRET_ENV_KEYS: ReadonlySet<string> = new Set(['KILN_RUNNER_JITCONFIG']);

export interface JobCommands {
  /** Accepts jobs (joined with concurrent submissions into few statements); all or none are stored. */
  submit(specs: JobSpec[]): Promise<Job[]>;
  /**
   * Accepts one job under an idempotency key (POST /v1/jobs with `Idempotency-Key`): a repeat of the key
   * within its window returns the job stored the first time (`replayed`), counted and announced once.
   */
  submitKeyed(spec: JobSpec, key: string, bodyHash: string): Promise<{ job: Job; replayed: boolean }>;
  /** Accepts one GitHub runner VM (the same path as every submission: counted, announced, scheduled). */
  submitRunnerJob(spec: JobSpec): Promise<Job>;
  /**
   * Cancels a job: a queued one at once, an active one by flagging it and stopping its VM (`job.stop`).
   * Undefined when the job does not exist.
   */
  cancel(jobId: number, reason?: string): Promise<Job | undefined>;
  /** Marks an active job lost (requeued as a new attempt if it never started). Undefined: no change. */
  lose(jobId: number, attempt: number, reason: string): Promise<{ job: Job; requeued: boolean } | undefined>;
  /** Times out an active job its host did not stop (the leader's fallback). */
  timeOut(jobId: number, attempt: number): Promise<void>;
  /** Marks claimed jobs placed, in the scheduler's transaction (only on hosts `serverId` owns). */
  place(tx: Tx, placements: { jobId: number; hostId: number }[], serverId: string): Promise<PlacedJob[]>;
  /** After the placing transaction committed and launches went out: counts and announces the placements. */
  placed(placements: Placement[]): void;
  /** Stores a batch of agent phase reports (the phase writer's group commit). */
  applyPhases(updates: PhaseUpdate[]): Promise<boolean[]>;
  /** Applies one phase a reconnecting agent reports for a job it kept running. */
  applyPhase(hostId: number, jobId: number, attempt: number, phase: 'booting' | 'running'): Promise<void>;
  /** Stores a batch of agent results (the result writer's group commit); announces nothing (see `finished`). */
  storeResults(batch: { hostId: number; r: JobResultMsg }[]): Promise<(ResultChange | undefined)[]>;
  /** After the gateway settled a stored result with its host: counts and announces the job's end. */
  finished(hostId: number, change: ResultChange): void;
  /** Removes a credential from a job's env (in the caller's transaction when given). */
  scrubSecretEnv(jobId: number, key: string, q?: Db | Tx): Promise<void>;
  /** Records what happened to a job's cache (its result's cache outcome: the usage records and the cache relay read it). */
  storeCacheOutcome(jobId: number, attempt: number, outcome: CacheOutcomeMsg): Promise<void>;
  /** Records the server's answer to a job's cache.ask before the agent hears it (the cache relay trusts an 'ask' job's commit only on a recorded yes); a stored yes holds and is returned; undefined: not the job's current attempt. */
  storeCacheAnswer(jobId: number, attempt: number, answer: { write: boolean; ref?: string; commit?: string; reason?: string }): Promise<CacheAnswerRow | undefined>;
}

export function makeJobCommands(ctx: ServerContext): JobCommands {
  const db = ctx.store.db;
  const stateChanged = (job: Pick<Job, 'id' | 'tenant' | 'attempt'> & { error?: Job['error'] }, from: JobState, to: JobState, started?: StartedTimes) =>
    ctx.events.emit('job.state', { job: { id: job.id, tenant: job.tenant, attempt: job.attempt, ...(job.error ? { error: job.error } : {}) }, from, to, ...(started ? { started } : {}) });
  // Concurrent submissions share statements when the store is busy (see group-commit.ts).
  const insert = makeGroupCommit((specs: JobSpec[]) => insertJobs(db, specs), { maxInFlight: ctx.store.kind === 'pglite' ? 1 : 4, maxItems: 1000 });

  async function submit(specs: JobSpec[]): Promise<Job[]> {
    const jobs = await insert(specs);
    ctx.metrics.submitted.inc(jobs.length);
    for (const job of jobs) ctx.events.emit('job.submitted', { job });
    return jobs;
  }

  return {
    submit,
    async submitKeyed(spec, key, bodyHash) {
      const r = await submitOnce(db, spec, key, bodyHash);
      if (!r.replayed) {
        ctx.metrics.submitted.inc(1);
        ctx.events.emit('job.submitted', { job: r.job });
      }
      return r;
    },
    async submitRunnerJob(spec) {
      const [job] = await submit([spec]);
      if (!job) throw new KilnError('github.submit_failed', 'the runner VM could not be queued', { kind: 'internal' });
      return job;
    },
    async cancel(jobId, reason = 'cancelled') {
      const r = await requestCancel(db, jobId);
      if (!r) return undefined;
      if (r.job.state !== r.from) stateChanged(r.job, r.from, r.job.state);
      if (r.stopHost !== null) ctx.events.emit('job.stop', { jobId: r.job.id, attempt: r.job.attempt, hostId: r.stopHost, reason });
      return r.job;
    },
    async lose(jobId, attempt, reason) {
      const r = await loseJob(db, jobId, attempt, reason);
      if (!r) return undefined;
      stateChanged(r.job, r.from, r.job.state);
      return { job: r.job, requeued: r.requeued };
    },
    async timeOut(jobId, attempt) {
      const r = await transitionJob(db, jobId, attempt, { type: 'time_out' }, {
        error: { code: 'job.timed_out', message: 'the job ran past its timeout and its host did not stop it' },
      });
      if (r) stateChanged(r.job, r.from, r.job.state);
    },
    place: (tx, placements, serverId) => markPlaced(tx, placements, serverId),
    placed(placements) {
      for (const p of placements) {
        ctx.metrics.placeLatency.observe(p.latencyMs / 1000);
        if (p.launched) ctx.events.emit('job.placed', { jobId: p.jobId, attempt: p.attempt, hostId: p.hostId, latencyMs: p.latencyMs });
      }
      ctx.metrics.placements.inc(placements.length);
    },
    async applyPhases(updates) {
      const running = new Set<string>();
      // How each started VM came up (warm or cold), by job and attempt: one pass, not a search per started job.
      const starts = new Map(updates.flatMap((u) => (u.phase === 'running' && u.start ? [[`${u.jobId}:${u.attempt}`, u] as const] : [])));
      for (const c of await applyPhases(db, updates)) {
        const job = { id: c.id, tenant: c.tenant, attempt: c.attempt };
        if (c.booted) stateChanged(job, 'placed', 'booting');
        stateChanged(job, c.booted ? 'booting' : c.from, c.state, c.started);
        if (c.state === 'running') {
          running.add(`${c.id}:${c.attempt}`);
          const u = starts.get(`${c.id}:${c.attempt}`);
          if (u?.start) {
            ctx.metrics.vmStarts.inc({ start: u.start });
            if (u.start === 'warm' && u.bootMs !== undefined) ctx.metrics.restoreSeconds.observe(u.bootMs / 1000);
          }
        }
      }
      // A start asked again (its answer was lost with a connection): granted if it was stored before.
      const again = updates.filter((u) => u.phase === 'running' && !running.has(`${u.jobId}:${u.attempt}`));
      if (again.length > 0) {
        for (const st of await jobStatuses(db, [...new Set(again.map((u) => u.jobId))])) {
          if (st.state === 'running') running.add(`${st.id}:${st.attempt}:${st.hostId ?? 0}`);
        }
      }
      return updates.map((u) => u.phase === 'running' && (running.has(`${u.jobId}:${u.attempt}`) || running.has(`${u.jobId}:${u.attempt}:${u.hostId}`)));
    },
    async applyPhase(hostId, jobId, attempt, phase) {
      const res = await transitionJob(db, jobId, attempt, (job) => {
        if (job.hostId !== hostId) return undefined;
        if (phase === 'booting') return job.state === 'placed' ? { event: { type: 'boot' } } : undefined;
        return { event: { type: 'start' } };
      });
      if (res) stateChanged(res.job, res.from, res.job.state);
    },
    async storeResults(batch) {
      const out: (ResultChange | undefined)[] = batch.map(() => undefined);
      const exits: { i: number; exitCode: number }[] = [];
      const others: number[] = [];
      batch.forEach((it, i) => {
        const e = exitEvent(it.r);
        if (e) exits.push({ i, exitCode: e.fields.exitCode });
        else others.push(i);
      });
      // VMs that exited, the usual end, in one statement; other results depend on the stored job
      // (cancellation, timeouts) and take a read and an optimistic update.
      const recorded = await recordExits(
        db,
        exits.map(({ i, exitCode }) => ({ jobId: batch[i]!.r.jobId, attempt: batch[i]!.r.attempt, hostId: batch[i]!.hostId, exitCode })),
      );
      exits.forEach(({ i }, k) => (out[i] = recorded[k]));
      const changed = await transitionJobs(
        db,
        others.map((i) => {
          const it = batch[i]!;
          return { jobId: it.r.jobId, attempt: it.r.attempt, choose: (job: Job) => (job.hostId === it.hostId ? resultEvent(it.r, job) : undefined) };
        }),
      );
      others.forEach((i, k) => (out[i] = changed[k]));
      return out;
    },
    finished(hostId, change) {
      ctx.metrics.finished.inc({ state: change.job.state });
      ctx.log.child({ jobId: change.job.id, hostId }).info({ state: change.job.state, exitCode: change.job.exitCode }, 'job finished');
      stateChanged(change.job, change.from, change.job.state);
    },
    scrubSecretEnv: (jobId, key, q = db) => removeJobEnv(q, jobId, key),
    storeCacheOutcome: (jobId, attempt, outcome) => setCacheOutcome(db, jobId, attempt, outcome),
    storeCacheAnswer: (jobId, attempt, answer) => setCacheAnswer(db, jobId, attempt, answer),
  };
}
