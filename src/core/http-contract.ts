/**
 * The HTTP contract of kiln's REST API: each route's method, path and TypeBox schemas (path parameters,
 * query, body, answer), shared by the server (src/server: its route table registers and validates requests
 * with these schemas and describes them in /openapi.json) and by its clients (src/cli/api-client.ts decodes
 * every answer against the route's answer schema, as the agent protocol does in agent-protocol.ts). Nothing
 * here does I/O. The agent protocol (WebSocket) and the GitHub webhook are described elsewhere.
 */
import { Type, type Static, type TSchema } from '@sinclair/typebox';
import { TypeCompiler, type TypeCheck } from '@sinclair/typebox/compiler';
import { ARCHES } from './arch.ts';
import { KilnError } from './errors.ts';
import { HOST_STATE_LIST } from './host-state.ts';
import { TOKEN_ROLES } from './host.ts';
import { JOB_STATE_LIST } from './job-state.ts';
import { POWER_DRIVERS } from './power.ts';
import { USAGE_DIMENSIONS } from './timings.ts';
import { CacheOutcomeMsg, HostCacheMsg, JobCacheMsg, MirrorStatusMsg, SnapshotStateMsg } from './agent-protocol.ts';

const Nullable = <T extends TSchema>(t: T) => Type.Union([t, Type.Null()]);
const OneOf = <T extends string>(values: readonly T[]) => Type.Union(values.map((v) => Type.Literal(v)));
const NAME_PATTERN = '^[A-Za-z0-9._-]+$';

// ---- Jobs ----------------------------------------------------------------------------------------------

export const JOB_MAX_TIMEOUT_MS = 7 * 24 * 3600 * 1000;
/** A number is milliseconds; below this it is almost surely seconds meant as milliseconds (and no VM boots). */
export const JOB_MIN_TIMEOUT_MS = 100;

const SizeOrBytes = Type.Union([Type.Integer({ minimum: 1, maximum: 2 ** 50 }), Type.String({ minLength: 1, maxLength: 20 })]);

/** Environment variables: names as a shell takes them, string values only (no other keys, no coercion). */
export const ENV_NAME_PATTERN = '^[A-Za-z_][A-Za-z0-9_]*$';
const EnvMap = Type.Object(
  {},
  { patternProperties: { [ENV_NAME_PATTERN]: Type.String({ maxLength: 100_000 }) }, additionalProperties: false, maxProperties: 500, propertyNames: { maxLength: 200 } },
);

export const JobSubmit = Type.Object(
  {
    labels: Type.Optional(Type.Array(Type.String({ maxLength: 100 }), { maxItems: 20 })),
    arch: Type.Optional(Type.String({ maxLength: 20 })),
    cpus: Type.Optional(Type.Integer({ minimum: 1, maximum: 256 })),
    memory: Type.Optional(SizeOrBytes),
    disk: Type.Optional(SizeOrBytes),
    image: Type.Optional(Type.String({ minLength: 1, maxLength: 200 })),
    command: Type.Array(Type.String({ maxLength: 100_000 }), { minItems: 1, maxItems: 1000 }),
    env: Type.Optional(EnvMap),
    secretEnv: Type.Optional(EnvMap),
    cwd: Type.Optional(Type.String({ maxLength: 1000 })),
    timeout: Type.Optional(
      Type.Union([
        Type.Integer({ minimum: JOB_MIN_TIMEOUT_MS, maximum: JOB_MAX_TIMEOUT_MS, description: 'milliseconds' }),
        Type.String({ minLength: 1, maxLength: 20, description: 'a duration: 90s, 30m, 2h' }),
      ]),
    ),
    network: Type.Optional(Type.Union([Type.Literal('none'), Type.Literal('user')])),
    priority: Type.Optional(Type.Integer({ minimum: -100, maximum: 100 })),
    tenant: Type.Optional(Type.String({ minLength: 1, maxLength: 100, pattern: NAME_PATTERN })),
    /**
     * A warm cache disk at /cache (docs/caches.md): `key` is the tenant's own name for it; `write` (default
     * false) asks for the job's copy to become the next version if it succeeds, which needs a token with the
     * cache-write permission; `size` applies when this job makes the cache.
     */
    cache: Type.Optional(
      Type.Object(
        {
          key: Type.String({ minLength: 1, maxLength: 200, pattern: '^[A-Za-z0-9][A-Za-z0-9._/-]*$' }),
          write: Type.Optional(Type.Boolean()),
          size: Type.Optional(SizeOrBytes),
        },
        { additionalProperties: false },
      ),
    ),
  },
  { additionalProperties: false },
);
export type JobSubmit = Static<typeof JobSubmit>;

export const JobBatch = Type.Object({ jobs: Type.Array(JobSubmit, { minItems: 1, maxItems: 1000 }) }, { additionalProperties: false });

/** A job as the API serves it (secret env values replaced by a placeholder). */
export const JobOut = Type.Object({
  id: Type.Integer(),
  tenant: Type.String(),
  state: OneOf(JOB_STATE_LIST),
  attempt: Type.Integer(),
  requirements: Type.Object({ arch: OneOf(ARCHES), cpus: Type.Integer(), memoryBytes: Type.Integer(), diskBytes: Type.Integer(), hostLabels: Type.Array(Type.String()) }),
  labels: Type.Array(Type.String()),
  image: Type.String(),
  command: Type.Array(Type.String()),
  env: Type.Record(Type.String(), Type.String()),
  secretEnv: Type.Optional(Type.Array(Type.String())),
  cwd: Type.Optional(Type.String()),
  timeoutMs: Type.Number(),
  network: Type.Union([Type.Literal('none'), Type.Literal('user')]),
  priority: Type.Integer(),
  submittedBy: Type.Optional(Type.Integer()),
  hostId: Nullable(Type.Integer()),
  exitCode: Nullable(Type.Integer()),
  error: Nullable(Type.Object({ code: Type.String(), message: Type.String() })),
  cancelRequested: Type.Boolean(),
  logBytes: Type.Number(),
  logTruncated: Type.Boolean(),
  /** The job's warm cache: the host-side key (tenant/key) and whether it may write it back. */
  cache: Type.Optional(JobCacheMsg),
  /** What happened to the job's cache once it finished: hit or miss, the version read, committed or why not, fetched from a peer host. */
  cacheOutcome: Type.Optional(CacheOutcomeMsg),
  createdAt: Type.String(),
  placedAt: Nullable(Type.String()),
  bootingAt: Nullable(Type.String()),
  runningAt: Nullable(Type.String()),
  finishedAt: Nullable(Type.String()),
});
export type JobOut = Static<typeof JobOut>;

export const JobTransitionOut = Type.Object({ attempt: Type.Integer(), state: OneOf(JOB_STATE_LIST), hostId: Nullable(Type.Integer()), detail: Nullable(Type.String()), at: Type.String() });
export const JobDetail = Type.Composite([
  JobOut,
  Type.Object({
    /** How the current attempt's VM came up, as its agent said with the start request: warm, cold, or null (not started, or an older agent). */
    vmStart: Type.Optional(Nullable(Type.Union([Type.Literal('warm'), Type.Literal('cold')]))),
    transitions: Type.Array(JobTransitionOut),
  }),
]);
export const JobList = Type.Object({ jobs: Type.Array(JobOut), next: Type.Union([Type.Integer(), Type.Null()]) });
export const JobListQuery = Type.Object(
  {
    state: Type.Optional(Type.String({ description: 'comma-separated states' })),
    tenant: Type.Optional(Type.String()),
    host: Type.Optional(Type.Integer()),
    before: Type.Optional(Type.Integer()),
    q: Type.Optional(Type.String({ maxLength: 200, description: 'search: a job id, or text in the command, labels, image, tenant or error message (not env)' })),
    limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000, default: 100 })),
  },
  { additionalProperties: false },
);
export const IdParams = Type.Object({ id: Type.Integer({ minimum: 1 }) });
export const LogQuery = Type.Object({ after: Type.Optional(Type.Integer({ minimum: 0 })), follow: Type.Optional(Type.Boolean()) }, { additionalProperties: false });

/** One line of a job's NDJSON log: an output chunk (data in base64), or the end with the job's final fields. */
export const LogLine = Type.Union([
  Type.Object({ id: Type.Integer(), attempt: Type.Integer(), stream: Type.Union([Type.Literal('stdout'), Type.Literal('stderr'), Type.Literal('kiln')]), data: Type.String(), end: Type.Optional(Type.Literal(false)) }),
  Type.Object({
    end: Type.Literal(true),
    state: OneOf(JOB_STATE_LIST),
    exitCode: Nullable(Type.Integer()),
    error: Nullable(Type.Object({ code: Type.String(), message: Type.String() })),
    logTruncated: Type.Boolean(),
  }),
]);
export type LogLine = Static<typeof LogLine>;

// ---- Hosts and power -----------------------------------------------------------------------------------

export const HostRefParams = Type.Object({ ref: Type.String({ minLength: 1, maxLength: 100 }) });
const Resources = Type.Object({ cpus: Type.Integer(), memoryBytes: Type.Integer(), diskBytes: Type.Integer() });
const HostPowerOut = Type.Object({
  driver: OneOf(POWER_DRIVERS),
  mac: Type.Optional(Type.String()),
  broadcast: Type.Optional(Type.String()),
  port: Type.Optional(Type.Integer()),
  lastError: Type.Optional(Type.Object({ at: Type.String(), action: Type.Union([Type.Literal('sleep'), Type.Literal('wake')]), message: Type.String() })),
});
export const HostOut = Type.Object({
  id: Type.Integer(),
  name: Type.String(),
  state: OneOf(HOST_STATE_LIST),
  cordoned: Type.Boolean(),
  drainRequested: Type.Boolean(),
  arch: OneOf(ARCHES),
  capacity: Resources,
  accel: Type.Union([Type.Literal('kvm'), Type.Literal('tcg'), Type.Literal('none')]),
  labels: Type.Array(Type.String()),
  driver: Type.String(),
  agentVersion: Type.String(),
  serverId: Nullable(Type.String()),
  connectedAt: Nullable(Type.String()),
  lastSeenAt: Type.String(),
  createdAt: Type.String(),
  mirror: Nullable(Type.Composite([MirrorStatusMsg, Type.Object({ reportedAt: Type.Optional(Type.String()) })], { additionalProperties: true })),
  stateSince: Type.String(),
  power: Nullable(HostPowerOut),
  wakeFailures: Type.Integer(),
  wakeMarkedUntil: Nullable(Type.String()),
  /** The warm caches the host's agent last reported (docs/caches.md); absent: none reported. */
  caches: Type.Optional(Type.Array(HostCacheMsg)),
});
export type HostOut = Static<typeof HostOut>;
/** A host with what its active jobs use. */
export const HostWithUsage = Type.Composite([
  HostOut,
  Type.Object({
    jobs: Type.Integer(),
    used: Resources,
    /** Warm-start snapshots as the host's agent last reported them; null on other replicas and for hosts that keep none. */
    snapshots: Type.Optional(Nullable(Type.Array(SnapshotStateMsg))),
  }),
]);
export type HostWithUsage = Static<typeof HostWithUsage>;
export const HostDeleteQuery = Type.Object({ force: Type.Optional(Type.Boolean()) }, { additionalProperties: false });

export const PowerRequestOut = Type.Object({
  id: Type.Integer(),
  hostId: Type.Integer(),
  hostName: Type.Optional(Type.String()),
  kind: Type.Union([Type.Literal('sleep'), Type.Literal('wake')]),
  state: OneOf(['pending', 'sent', 'done', 'failed', 'cancelled'] as const),
  reason: Type.String(),
  jobs: Type.Integer(),
  attempts: Type.Integer(),
  notBefore: Type.String(),
  deadline: Nullable(Type.String()),
  error: Nullable(Type.String()),
  createdAt: Type.String(),
  sentAt: Nullable(Type.String()),
  doneAt: Nullable(Type.String()),
});
export const PowerAnswer = Type.Object({ host: Type.String(), request: PowerRequestOut });
export const PowerQuery = Type.Object({ limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000 })) }, { additionalProperties: false });
/** The power status: the policy (a schedule keeping every host awake says "all"), the leader's last decision, recent requests. */
export const PowerStatus = Type.Object({ policy: Type.Unknown(), lastDecision: Type.Unknown(), requests: Type.Array(PowerRequestOut) });

// ---- Tokens and tenants --------------------------------------------------------------------------------

export const TokenCreate = Type.Object(
  {
    name: Type.String({ minLength: 1, maxLength: 100 }),
    role: OneOf(TOKEN_ROLES),
    tenant: Type.Optional(Type.String({ minLength: 1, maxLength: 100, pattern: NAME_PATTERN })),
  },
  { additionalProperties: false },
);
export const TokenOut = Type.Object({
  id: Type.Integer(),
  name: Type.String(),
  role: OneOf(TOKEN_ROLES),
  tenant: Type.String(),
  createdAt: Type.String(),
  lastUsedAt: Nullable(Type.String()),
  revokedAt: Nullable(Type.String()),
});
export const TenantOut = Type.Object({ name: Type.String(), maxConcurrent: Nullable(Type.Integer()), active: Type.Integer(), queued: Type.Integer() });
export const TenantParams = Type.Object({ name: Type.String({ minLength: 1, maxLength: 100, pattern: NAME_PATTERN }) });
export const TenantLimit = Type.Object({ maxConcurrent: Type.Union([Type.Null(), Type.Integer({ minimum: 0, maximum: 1_000_000 })]) }, { additionalProperties: false });

// ---- GitHub --------------------------------------------------------------------------------------------

export const GitHubJobsQuery = Type.Object(
  { decision: Type.Optional(Type.String({ enum: ['pending', 'accepted', 'ignored', 'refused'] })), repo: Type.Optional(Type.String()), limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000 })) },
  { additionalProperties: false },
);
export const GitHubJobOut = Type.Object({
  jobId: Type.Integer(),
  runAttempt: Type.Integer(),
  runId: Type.Integer(),
  repo: Type.String(),
  labels: Type.Array(Type.String()),
  state: Type.String(),
  decision: Type.String(),
  reason: Nullable(Type.Object({ code: Type.String(), message: Type.String() })),
  runnerName: Nullable(Type.String()),
  workflow: Nullable(Type.String()),
  failures: Type.Integer(),
  nextAttemptAt: Nullable(Type.String()),
});
export const HostListQuery = Type.Object(
  { after: Type.Optional(Type.String({ maxLength: 100 })), limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 10_000 })) },
  { additionalProperties: false },
);
export const GitHubRunnersQuery = Type.Object({ all: Type.Optional(Type.Boolean()), limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000 })) }, { additionalProperties: false });
export const GitHubRunnerOut = Type.Object({
  name: Type.String(),
  state: Type.String(),
  scope: Type.String(),
  labels: Type.Array(Type.String()),
  runnerId: Nullable(Type.Integer()),
  kilnJobId: Nullable(Type.Integer()),
  ghJobId: Nullable(Type.Integer()),
  lastError: Nullable(Type.String()),
  createdAt: Nullable(Type.String()),
  endedAt: Nullable(Type.String()),
});
export const GitHubUsageQuery = Type.Object(
  { repo: Type.Optional(Type.String()), org: Type.Optional(Type.String()), limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 10000 })) },
  { additionalProperties: false },
);
/** A usage record per GitHub job: repository, organization, sender, labels, workflow, times, host, VM size, conclusion. */
export const GitHubUsageOut = Type.Object({
  jobId: Type.Integer(),
  runAttempt: Type.Integer(),
  repo: Type.String(),
  org: Nullable(Type.String()),
  sender: Nullable(Type.String()),
  labels: Type.Array(Type.String()),
  workflow: Nullable(Type.String()),
  runnerName: Nullable(Type.String()),
  kilnJobId: Nullable(Type.Integer()),
  hostId: Nullable(Type.Integer()),
  cpus: Nullable(Type.Integer()),
  memoryBytes: Nullable(Type.Integer()),
  conclusion: Nullable(Type.String()),
  queuedAt: Nullable(Type.String()),
  startedAt: Nullable(Type.String()),
  completedAt: Nullable(Type.String()),
});

// ---- Reports and the dashboard ------------------------------------------------------------------------

export const REPORT_PERIODS = ['day', 'week', 'month'] as const;
export const TimingsQuery = Type.Object({ window: Type.Optional(Type.String({ maxLength: 20, description: 'e.g. 15m, 1h, 7d (default 1h)' })) }, { additionalProperties: false });
export const PeriodQuery = Type.Object({ period: Type.Optional(OneOf(REPORT_PERIODS)), by: Type.Optional(OneOf(USAGE_DIMENSIONS)) }, { additionalProperties: false });
export const CsvQuery = Type.Object({ period: Type.Optional(OneOf(REPORT_PERIODS)) }, { additionalProperties: false });
export const WhoAmI = Type.Object({ name: Type.String(), role: OneOf(TOKEN_ROLES), tenant: Type.String() });

// ---- Errors and the live feed --------------------------------------------------------------------------

/** Every error answer: a stable code, a message, and how to fix it when kiln knows. */
export const ErrorAnswer = Type.Object({ error: Type.Object({ code: Type.String(), message: Type.String(), hint: Type.Optional(Type.String()) }) });
export type ErrorAnswer = Static<typeof ErrorAnswer>;

/** One message of the dashboard's live feed (`/v1/live`, server-sent events): what changed in a tick. */
export interface LiveDelta {
  /** Jobs whose state changed in this tick (at most 500; `moreJobs` says some were left out). */
  jobs: { id: number; state: string; tenant: string }[];
  moreJobs: boolean;
  /** Jobs submitted in this tick. */
  submitted: number;
  /** Jobs with new log output. */
  logs: number[];
  hosts: { id: number; name: string; state?: string; event: string }[];
  github: boolean;
}

// ---- The routes ----------------------------------------------------------------------------------------

export interface RouteSchemas {
  params?: TSchema;
  querystring?: TSchema;
  body?: TSchema;
  /** The answer of a success; absent for answers that are not JSON (a job's NDJSON log). */
  response?: TSchema;
}
export interface RouteContract {
  method: 'GET' | 'POST' | 'PUT' | 'DELETE';
  url: string;
  schema: RouteSchemas;
}
const route = <S extends RouteSchemas>(method: RouteContract['method'], url: string, schema: S) => ({ method, url, schema });

/** Egress allowlists per tenant and per GitHub repository (docs/network.md). */
export const EgressPolicyOut = Type.Object({ kind: Type.String(), scope: Type.String(), allow: Type.Array(Type.String()) });
export const EgressBody = Type.Object({ allow: Type.Array(Type.String({ minLength: 1, maxLength: 300 }), { maxItems: 256 }) }, { additionalProperties: false });
export const EgressTenantParams = Type.Object({ name: Type.String({ minLength: 1, maxLength: 100 }) });
export const EgressRepoParams = Type.Object({
  owner: Type.String({ minLength: 1, maxLength: 100, pattern: '^[A-Za-z0-9_.-]+$' }),
  repo: Type.String({ minLength: 1, maxLength: 100, pattern: '^[A-Za-z0-9_.-]+$' }),
});

/** Every REST route of the route table, by name (the GitHub webhook and the agent endpoint are apart). */
export const API = {
  submitJob: route('POST', '/v1/jobs', { body: JobSubmit, response: JobOut }),
  submitJobs: route('POST', '/v1/jobs/batch', { body: JobBatch, response: Type.Object({ ids: Type.Array(Type.Integer()) }) }),
  listJobs: route('GET', '/v1/jobs', { querystring: JobListQuery, response: JobList }),
  getJob: route('GET', '/v1/jobs/:id', { params: IdParams, response: JobDetail }),
  cancelJob: route('POST', '/v1/jobs/:id/cancel', { params: IdParams, response: JobOut }),
  jobLogs: route('GET', '/v1/jobs/:id/logs', { params: IdParams, querystring: LogQuery }),
  listHosts: route('GET', '/v1/hosts', { querystring: HostListQuery, response: Type.Object({ hosts: Type.Array(HostWithUsage), next: Type.Union([Type.String(), Type.Null()]) }) }),
  getHost: route('GET', '/v1/hosts/:ref', { params: HostRefParams, response: HostWithUsage }),
  drainHost: route('POST', '/v1/hosts/:ref/drain', { params: HostRefParams, response: HostOut }),
  cordonHost: route('POST', '/v1/hosts/:ref/cordon', { params: HostRefParams, response: HostOut }),
  uncordonHost: route('POST', '/v1/hosts/:ref/uncordon', { params: HostRefParams, response: HostOut }),
  removeHost: route('DELETE', '/v1/hosts/:ref', { params: HostRefParams, querystring: HostDeleteQuery, response: Type.Object({ removed: Type.String() }) }),
  wakeHost: route('POST', '/v1/hosts/:ref/wake', { params: HostRefParams, response: PowerAnswer }),
  sleepHost: route('POST', '/v1/hosts/:ref/sleep', { params: HostRefParams, response: PowerAnswer }),
  powerStatus: route('GET', '/v1/power', { querystring: PowerQuery, response: PowerStatus }),
  createToken: route('POST', '/v1/tokens', { body: TokenCreate, response: Type.Object({ token: TokenOut, secret: Type.String() }) }),
  listTokens: route('GET', '/v1/tokens', { response: Type.Object({ tokens: Type.Array(TokenOut) }) }),
  revokeToken: route('DELETE', '/v1/tokens/:id', { params: IdParams, response: TokenOut }),
  listTenants: route('GET', '/v1/tenants', { response: Type.Object({ tenants: Type.Array(TenantOut) }) }),
  setTenantLimit: route('PUT', '/v1/tenants/:name', { params: TenantParams, body: TenantLimit, response: Type.Object({ name: Type.String(), maxConcurrent: Nullable(Type.Integer()) }) }),
  githubJobs: route('GET', '/v1/github/jobs', { querystring: GitHubJobsQuery, response: Type.Object({ jobs: Type.Array(GitHubJobOut), truncated: Type.Boolean() }) }),
  githubRunners: route('GET', '/v1/github/runners', { querystring: GitHubRunnersQuery, response: Type.Object({ runners: Type.Array(GitHubRunnerOut), truncated: Type.Boolean() }) }),
  githubUsage: route('GET', '/v1/github/usage', { querystring: GitHubUsageQuery, response: Type.Object({ usage: Type.Array(GitHubUsageOut), truncated: Type.Boolean() }) }),
  // The dashboard's reads: answers described by the server's types for now (no answer schema yet).
  timings: route('GET', '/v1/reports/timings', { querystring: TimingsQuery }),
  usage: route('GET', '/v1/reports/usage', { querystring: PeriodQuery }),
  usageCsv: route('GET', '/v1/reports/usage.csv', { querystring: CsvQuery }),
  queue: route('GET', '/v1/queue', {}),
  whoami: route('GET', '/v1/whoami', { response: WhoAmI }),
  live: route('GET', '/v1/live', {}),
  egressPolicies: route('GET', '/v1/egress', { response: Type.Object({ policies: Type.Array(EgressPolicyOut) }) }),
  setTenantEgress: route('PUT', '/v1/egress/tenants/:name', { params: EgressTenantParams, body: EgressBody, response: EgressPolicyOut }),
  setRepoEgress: route('PUT', '/v1/egress/repos/:owner/:repo', { params: EgressRepoParams, body: EgressBody, response: EgressPolicyOut }),
} as const;

/** Path and query values travel as text: a caller may pass a number's text as it was given (the server checks it). */
type AsText<T> = { [K in keyof T]: T[K] | (T[K] extends number | boolean | undefined ? string : never) };
/** What a call of route R sends: its path parameters, query and body, each only where R has them. */
export type RouteInput<R extends RouteContract> = (R['schema'] extends { params: infer P extends TSchema } ? { params: AsText<Static<P>> } : { params?: undefined }) &
  (R['schema'] extends { querystring: infer Q extends TSchema } ? { query?: AsText<Static<Q>> } : { query?: undefined }) &
  (R['schema'] extends { body: infer B extends TSchema } ? { body: Static<B> } : { body?: undefined });
/** A route whose success is a JSON answer with a schema. */
export type AnsweringRoute = RouteContract & { schema: { response: TSchema } };
/** What a success of route R answers. */
export type RouteAnswer<R extends RouteContract> = R extends AnsweringRoute ? Static<R['schema']['response']> : unknown;

/** The path of a call: `:name` segments filled from the parameters, then the query (undefined values left out). */
export function routePath(url: string, params: unknown, query: unknown): string {
  const given = new Map(params !== null && typeof params === 'object' ? Object.entries(params) : []);
  const path = url.replace(/:(\w+)/g, (_, name: string) => {
    const v: unknown = given.get(name);
    if (v === undefined) throw new KilnError('client.bad_call', `the call of ${url} lacks its ${name} parameter`);
    return encodeURIComponent(String(v));
  });
  const q = new URLSearchParams();
  for (const [k, v] of query !== null && typeof query === 'object' ? Object.entries(query) : []) if (v !== undefined) q.set(k, String(v));
  const qs = q.toString();
  return qs ? `${path}?${qs}` : path;
}

const checkers = new WeakMap<TSchema, TypeCheck<TSchema>>();
function checkerOf<T extends TSchema>(schema: T): TypeCheck<T> {
  let c = checkers.get(schema);
  if (!c) checkers.set(schema, (c = TypeCompiler.Compile(schema)));
  return c as TypeCheck<T>;
}

/** Checks a decoded answer against its schema; an answer that does not fit is a clear error, not a crash later. */
export function decodeAnswer<T extends TSchema>(what: string, schema: T, value: unknown): Static<T> {
  const check = checkerOf(schema);
  if (check.Check(value)) return value;
  const first = check.Errors(value).First();
  throw new KilnError('client.bad_answer', `the server's answer to ${what} does not fit kiln's API${first ? `: ${first.path || '/'} ${first.message}` : ''}`, {
    hint: 'run the same kiln version on the CLI and the server',
  });
}
