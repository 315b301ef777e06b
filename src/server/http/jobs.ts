/** Jobs API: submit (one or a batch), list and filter, get, cancel, logs (optionally followed live); schemas in core/http-contract.ts. */
import { parseArch } from '../../core/arch.ts';
import { KilnError } from '../../core/errors.ts';
import { DEFAULT_IMAGE, DEFAULT_TIMEOUT_MS, type Job, type JobSpec } from '../../core/job.ts';
import { JOB_STATE_LIST, isTerminal, type JobState } from '../../core/job-state.ts';
import type { Token } from '../../core/host.ts';
import { parseLabels, validateRequirements, DEFAULT_REQUIREMENTS, type Requirements } from '../../core/requirements.ts';
import { parseDuration, parseSize } from '../../core/sizes.ts';
import { getJob, jobTransitions, listJobs, startOfDetail } from '../../store/jobs.ts';
import { SECRET_ENV_KEYS } from '../jobs/job-commands.ts';
import { allows, mayAccessTenant, tenantScope } from './auth.ts';
import { API, JOB_MAX_TIMEOUT_MS as MAX_TIMEOUT_MS, JOB_MIN_TIMEOUT_MS as MIN_TIMEOUT_MS, type JobSubmit, type LogLine } from '../../core/http-contract.ts';
import { readLogs } from '../../store/logs.ts';
import { checkIdempotencyKey, requestHash } from '../../store/submissions.ts';
import type { ApiDeps } from './deps.ts';
import { pageByBytes } from './listing.ts';
import { defineRoute, type RouteDef } from './routes.ts';

/** Turns a submission into a job spec, collecting every problem at once. Pure. */
export function resolveSubmission(body: JobSubmit, token: Pick<Token, 'id' | 'role' | 'tenant'>): JobSpec {
  const problems: string[] = [];
  const attempt = <T>(f: () => T): T | undefined => {
    try {
      return f();
    } catch (e) {
      problems.push(e instanceof Error ? e.message : String(e));
      return undefined;
    }
  };
  let req: Requirements = body.labels && body.labels.length > 0 ? (attempt(() => parseLabels(body.labels ?? [])) ?? DEFAULT_REQUIREMENTS) : { ...DEFAULT_REQUIREMENTS };
  if (body.arch !== undefined) req = { ...req, arch: attempt(() => parseArch(body.arch ?? '')) ?? req.arch };
  if (body.cpus !== undefined) req = { ...req, cpus: body.cpus };
  if (body.memory !== undefined) {
    const m = body.memory;
    req = { ...req, memoryBytes: (typeof m === 'number' ? m : attempt(() => parseSize(m, 'memory'))) ?? req.memoryBytes };
  }
  if (body.disk !== undefined) {
    const d = body.disk;
    req = { ...req, diskBytes: (typeof d === 'number' ? d : attempt(() => parseSize(d, 'disk'))) ?? req.diskBytes };
  }
  attempt(() => validateRequirements(req));
  const t = body.timeout;
  const timeoutMs = t === undefined ? DEFAULT_TIMEOUT_MS : typeof t === 'number' ? t : (attempt(() => parseDuration(t, 'timeout')) ?? DEFAULT_TIMEOUT_MS);
  if (!(timeoutMs >= MIN_TIMEOUT_MS)) problems.push(`timeout must be at least ${MIN_TIMEOUT_MS}ms (a number is milliseconds; "90s" gives a unit)`);
  if (timeoutMs > MAX_TIMEOUT_MS) problems.push('timeout must be at most 7 days');
  const env = body.env ?? {};
  const secretEnv = body.secretEnv ?? {};
  const both = Object.keys(secretEnv).filter((k) => Object.hasOwn(env, k));
  if (both.length > 0) problems.push(`${both.join(', ')} given in both env and secretEnv`);
  if (body.tenant !== undefined && body.tenant !== token.tenant && token.role !== 'admin') problems.push('only admin tokens may submit for another tenant');
  let cache: JobSpec['cache'];
  if (body.cache) {
    const c = body.cache;
    if (c.key.includes('..')) problems.push(`cache key "${c.key}" may not contain ".."`);
    const size = c.size === undefined ? undefined : typeof c.size === 'number' ? c.size : attempt(() => parseSize(String(c.size), 'cache size'));
    if (size !== undefined && (size < 16 * 1024 * 1024 || size > 2 ** 44)) problems.push('cache size must be between 16M and 16T');
    if (c.write && !allows(token.role, 'cache-write')) {
      throw new KilnError('auth.forbidden', `a ${token.role} token may not write caches (needs cache-write)`, { hint: 'submit with cache.write false (read only), or use an operator or admin token' });
    }
    // Caches are per tenant: the host-side key is prefixed, so one tenant's jobs never read another's cache.
    cache = { key: `${body.tenant ?? token.tenant}/${c.key}`, write: c.write === true, ...(size !== undefined ? { sizeBytes: size } : {}), by: `api token ${token.id}` };
  }
  if (problems.length > 0) throw new KilnError('job.bad_request', problems.join('; '), { hint: 'fix the fields named above and submit again' });
  return {
    tenant: body.tenant ?? token.tenant,
    requirements: req,
    labels: body.labels ?? [],
    image: body.image ?? DEFAULT_IMAGE,
    command: body.command,
    env: { ...env, ...secretEnv },
    ...(Object.keys(secretEnv).length > 0 ? { secretEnv: Object.keys(secretEnv) } : {}),
    ...(body.cwd !== undefined ? { cwd: body.cwd } : {}),
    timeoutMs,
    network: body.network ?? 'none',
    priority: body.priority ?? 0,
    submittedBy: token.id,
    ...(cache ? { cache } : {}),
  };
}

export const SECRET_PLACEHOLDER = '[secret]';

/**
 * A job as the API serves it: secret env values are write-only, replaced by a placeholder (the ones marked
 * secret at submit, and credentials kiln itself puts there, such as a GitHub runner's JIT config).
 */
export function jobJson(j: Job): Job {
  const marked = new Set(j.secretEnv ?? []);
  const keys = Object.keys(j.env);
  if (!keys.some((k) => marked.has(k) || SECRET_ENV_KEYS.has(k))) return j;
  return { ...j, env: Object.fromEntries(keys.map((k) => [k, marked.has(k) || SECRET_ENV_KEYS.has(k) ? SECRET_PLACEHOLDER : j.env[k]!])) };
}

export function jobRoutes(deps: ApiDeps): RouteDef[] {
  const { ctx } = deps;
  const db = ctx.store.db;
  // Every job change goes through the door (jobs/job-commands.ts); the scheduler kicks on `job.submitted`.
  const submit = (specs: JobSpec[]): Promise<Job[]> => deps.jobs.submit(specs);
  // A job of another tenant is answered exactly like a missing one (its existence is not disclosed).
  const need = async (id: number, token: Token | undefined): Promise<Job> => {
    const j = await getJob(db, id);
    if (!j || !mayAccessTenant(token, j.tenant)) throw new KilnError('job.not_found', `job ${id} does not exist`, { hint: 'list jobs with `kiln jobs ls`' });
    return j;
  };
  return [
    defineRoute(
      API.submitJob,
      { tag: 'jobs', summary: 'Submit a job (requirements as fields, or labels such as kiln-arm64-8cpu-32gb)', permission: 'submit' },
      async (req, reply, token) => {
        const spec = resolveSubmission(req.body, token!);
        const keyHeader = req.headers['idempotency-key'];
        if (keyHeader === undefined) {
          const [job] = await submit([spec]);
          return reply.code(201).send(jobJson(job!));
        }
        // A keyed submission: one job per key and tenant for IDEMPOTENCY_WINDOW_MS (store/submissions.ts).
        const key = checkIdempotencyKey(Array.isArray(keyHeader) ? keyHeader.join(',') : keyHeader);
        const { job, replayed } = await deps.jobs.submitKeyed(spec, key, requestHash(req.body));
        if (replayed) return reply.code(201).header('idempotent-replayed', 'true').send(jobJson(job));
        return reply.code(201).send(jobJson(job!));
      },
    ),
    defineRoute(API.submitJobs, { tag: 'jobs', summary: 'Submit up to 1,000 jobs at once; all or none are accepted', permission: 'submit' }, async (req, reply, token) => {
      const specs = req.body.jobs.map((j, i) => {
        try {
          return resolveSubmission(j, token!);
        } catch (e) {
          throw new KilnError('job.bad_request', `jobs[${i}]: ${(e as Error).message}`);
        }
      });
      const jobs = await submit(specs);
      return reply.code(201).send({ ids: jobs.map((j) => j.id) });
    }),
    defineRoute(
      API.listJobs,
      {
        tag: 'jobs',
        summary: 'List jobs, newest first; at most `limit` (1,000) jobs and 4 MiB of JSON: `next`, when not null, is the `before` that lists the rest',
        permission: 'read',
      },
      async (req, _reply, token) => {
      const q = req.query;
      const scope = tenantScope(token);
      if (scope !== undefined && q.tenant !== undefined && q.tenant !== scope) {
        throw new KilnError('auth.forbidden', `a ${token!.role} token of tenant ${scope} may not list tenant ${q.tenant}'s jobs`, { hint: 'use an admin token, or leave out tenant' });
      }
      const tenant = scope ?? q.tenant;
      const states = q.state ? q.state.split(',').map((s) => s.trim()) : undefined;
      const bad = states?.filter((s) => !JOB_STATE_LIST.includes(s as JobState));
      if (bad && bad.length > 0) throw new KilnError('request.bad_state', `unknown job state ${bad.join(', ')}`, { hint: `states: ${JOB_STATE_LIST.join(', ')}` });
      // Read a page at a time and cut at the byte cap (http/listing.ts): `next` continues with ?before=.
      const { items, next } = await pageByBytes({
        fetchPage: (cursor: number | undefined, n) =>
          listJobs(db, {
            ...(states ? { states: states as JobState[] } : {}),
            ...(tenant !== undefined ? { tenant } : {}),
            ...(q.host !== undefined ? { hostId: q.host } : {}),
            ...(cursor !== undefined ? { beforeId: cursor } : {}),
            ...(q.q !== undefined ? { text: q.q } : {}),
            limit: n,
          }),
        cursorOf: (j) => j.id,
        toJson: jobJson,
        limit: q.limit ?? 100,
        ...(q.before !== undefined ? { start: q.before } : {}),
      });
      return { jobs: items, next };
    },
    ),
    defineRoute(API.getJob, { tag: 'jobs', summary: 'One job, with a timestamp per state transition', permission: 'read' }, async (req, _reply, token) => {
      const { id } = req.params;
      const job = await need(id, token);
      const transitions = await jobTransitions(db, id);
      // How the current attempt's VM came up (the agent says so with its start request): warm, cold or null.
      const ran = transitions.filter((t) => t.attempt === job.attempt && t.state === 'running').pop();
      return { ...jobJson(job), vmStart: startOfDetail(ran?.detail ?? null), transitions };
    }),
    defineRoute(API.cancelJob, { tag: 'jobs', summary: 'Cancel a job: queued jobs at once, running ones by stopping their VM', permission: 'submit' }, async (req, _reply, token) => {
      const { id } = req.params;
      await need(id, token);
      const job = await deps.jobs.cancel(id);
      if (!job) throw new KilnError('job.not_found', `job ${id} does not exist`);
      return jobJson(job);
    }),
    defineRoute(
      API.jobLogs,
      {
        tag: 'jobs',
        summary: 'The job log as NDJSON chunks ({id, attempt, stream, data: base64}), then {end, state, exitCode}; follow=true streams live',
        permission: 'read',
        produces: 'application/x-ndjson',
      },
      async (req, reply, token) => {
        const { id } = req.params;
        const q = req.query;
        await need(id, token);
        reply.hijack();
        const res = reply.raw;
        res.writeHead(200, { 'content-type': 'application/x-ndjson', 'cache-control': 'no-store' });
        let closed = false;
        res.on('close', () => (closed = true));
        let after = q.after ?? 0;
        const write = (o: LogLine) => new Promise<void>((r) => (res.write(`${JSON.stringify(o)}\n`) ? r() : res.once('drain', r)));
        try {
          for (;;) {
            if (closed) return;
            const chunks = await readLogs(db, id, after, 500);
            for (const c of chunks) await write({ id: c.id, attempt: c.attempt, stream: c.stream, data: c.data.toString('base64') });
            if (chunks.length > 0) after = chunks[chunks.length - 1]!.id;
            if (chunks.length === 500) continue;
            const job = await need(id, token);
            if (isTerminal(job.state) || !q.follow) {
              // Logs are stored before a job becomes final: drain what is left, then end.
              for (let more = await readLogs(db, id, after, 500); more.length > 0; more = await readLogs(db, id, after, 500)) {
                for (const c of more) await write({ id: c.id, attempt: c.attempt, stream: c.stream, data: c.data.toString('base64') });
                after = more[more.length - 1]!.id;
              }
              await write({ end: true, state: job.state, exitCode: job.exitCode, error: job.error, logTruncated: job.logTruncated });
              return;
            }
            await waitForChange(deps, id, 1000);
          }
        } catch (e) {
          ctx.log.warn({ err: e, jobId: id }, 'log stream ended with an error');
        } finally {
          res.end();
        }
        return undefined;
      },
    ),
  ];
}

/** Resolves when the job has new logs or changes state here, or after `ms` (other replicas' changes). */
function waitForChange(deps: ApiDeps, jobId: number, ms: number): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(t);
      offLogs();
      offState();
      resolve();
    };
    const t = setTimeout(done, ms);
    const offLogs = deps.ctx.events.on('job.logs', (e) => e.jobId === jobId && done());
    const offState = deps.ctx.events.on('job.state', (e) => e.job.id === jobId && done());
  });
}
