/**
 * A GitHub API test double on loopback. It validates every request body and every response it sends
 * against @octokit/openapi (a mismatch is recorded in `violations`, which tests assert empty), enforces
 * App JWT (RS256, iat/exp) on /app/** and installation lookups and installation tokens (with expiry)
 * elsewhere, keeps runner and job state, sends signed `workflow_job` webhooks built from the real examples,
 * and injects faults. It also serves the stand-in runner (`/_runner/*`, not part of GitHub's REST API):
 * a runner connects with its JIT config, is offered a matching queued job, runs it, and exits.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createVerify, randomBytes, randomUUID, type KeyObject } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import { check, hasOperation, requestPointer, responsePointer, webhookPointer } from './openapi.ts';
import { workflowJobPayload, type PayloadJob } from './payloads.ts';
import { signBody } from '../../../src/server/github/signature.ts';

export interface DoubleRepo {
  fullName: string;
  id: number;
  private: boolean;
  ownerType: 'Organization' | 'User';
  installationId: number;
  /** The repository's default branch (GET /repos/{owner}/{repo}); `main` unless a test sets it. */
  defaultBranch: string;
  /** Branches (besides the default one) and tags, by name → the commit they name (GET …/git/ref/{ref}). */
  branches: Map<string, string>;
  tags: Map<string, string>;
}

export interface DoubleRunner {
  id: number;
  name: string;
  /** `owner/repo` or `owner` (org). */
  scope: string;
  labels: string[];
  status: 'online' | 'offline';
  busy: boolean;
  secret: string;
  jobId: number | null;
  sessions: number;
  /** A hung runner process: it stays connected but GitHub sees it offline. */
  hung?: boolean;
}

export interface DoubleJob extends PayloadJob {
  status: 'waiting' | 'queued' | 'in_progress' | 'completed';
  headRepo: string;
  /** The run's event: `push` for a run from the repository itself, `pull_request` for a fork's, unless set. */
  event: string;
  /** The run's head_branch: a branch's or (for a tag push) a tag's short name, as GitHub gives it. */
  headBranch: string;
  headSha: string;
}

/** The commit every double job runs on unless a test names another. */
export const DOUBLE_HEAD_SHA = '3484a3fb816e0859fd6e1cea078d76385ff50625';

export interface DoubleDelivery {
  id: number;
  guid: string;
  action: string;
  body: string;
  statusCode: number;
  deliveredAt: string;
  redelivery: boolean;
}

export interface DoubleOptions {
  publicKey: KeyObject;
  appId: string;
  webhookUrl?: string;
  webhookSecret: string;
  tokenTtlMs?: number;
  /** How long a stand-in runner's job takes. */
  jobMs?: number;
}

interface Faults {
  /** The next N generate-jitconfig calls register the runner but answer 409 (a lost answer). */
  jitConflict: number;
  /** Status (and headers, e.g. a rate limit's) to answer the next N requests whose path matches. */
  fail: { re: RegExp; status: number; left: number; headers?: Record<string, string>; message?: string }[];
  /** Webhooks for these actions are recorded as failed deliveries and not sent (lost, or sent later by a test). */
  dropActions: Set<string>;
  /** Runners that never connect (boot failure): their stand-ins are refused. */
  neverConnect: boolean;
  /** Queued jobs are not offered to runners (they sit idle). */
  holdJobs: boolean;
  /** Offer the newest matching job first (so a runner takes another job than the one it was made for). */
  newestFirst: boolean;
  /** Runners (by name) that are offered no job for now. */
  heldRunners: Set<string>;
}

export class GitHubDouble {
  url = '';
  readonly violations: string[] = [];
  readonly calls: { method: string; path: string; status: number; at: number }[] = [];
  readonly repos = new Map<string, DoubleRepo>();
  readonly runners = new Map<number, DoubleRunner>();
  readonly jobs = new Map<number, DoubleJob>();
  readonly deliveries: DoubleDelivery[] = [];
  /** Installation ids that went stale (the App was reinstalled): old → current. */
  readonly staleInstallations = new Map<number, number>();
  readonly faults: Faults = { jitConflict: 0, fail: [], neverConnect: false, holdJobs: false, newestFirst: false, heldRunners: new Set(), dropActions: new Set() };
  /** Every runner name ever registered (to check uniqueness). */
  readonly registeredNames: string[] = [];
  /** When each runner name was registered (benchmarks: delivery → generate-jitconfig latency). */
  readonly registeredAt = new Map<string, number>();
  /** Every encoded JIT config handed out (credentials: tests check none reaches a log). */
  readonly issuedJitConfigs: string[] = [];
  readonly tokens = new Map<string, { installationId: number; expiresAt: number }>();
  webhookUrl: string | undefined;
  /** The address runners are told to use (a VM reaches the host's loopback as 10.0.2.2). */
  runnerUrl: string | undefined;
  #server: Server | undefined;
  #nextId = 1000;
  #waiters = new Set<() => void>();
  #opts: DoubleOptions;

  constructor(o: DoubleOptions) {
    this.#opts = o;
    this.webhookUrl = o.webhookUrl;
  }

  async start(): Promise<void> {
    this.#server = createServer((req, res) => void this.#handle(req, res));
    this.#server.keepAliveTimeout = 100;
    await new Promise<void>((r) => this.#server!.listen(0, '127.0.0.1', r));
    this.url = `http://127.0.0.1:${(this.#server.address() as AddressInfo).port}`;
  }

  async close(): Promise<void> {
    for (const w of this.#waiters) w();
    this.#server?.closeAllConnections();
    await new Promise<void>((r) => (this.#server ? this.#server.close(() => r()) : r()));
  }

  addRepo(fullName: string, o: Partial<Omit<DoubleRepo, 'fullName'>> = {}): DoubleRepo {
    const r: DoubleRepo = {
      fullName,
      id: this.#nextId++,
      private: o.private ?? false,
      ownerType: o.ownerType ?? 'Organization',
      installationId: o.installationId ?? 42,
      defaultBranch: o.defaultBranch ?? 'main',
      branches: o.branches ?? new Map(),
      tags: o.tags ?? new Map(),
    };
    this.repos.set(fullName.toLowerCase(), r);
    return r;
  }

  /** A new job on GitHub; sends its `queued` webhook unless told otherwise. */
  async queueJob(
    repo: string,
    labels: string[],
    o: { headRepo?: string; event?: string; headBranch?: string; headSha?: string; waiting?: boolean; send?: boolean; drop?: boolean; installationId?: number } = {},
  ): Promise<DoubleJob> {
    const r = this.repos.get(repo.toLowerCase());
    if (!r) throw new Error(`no repo ${repo}`);
    const id = this.#nextId++;
    const job: DoubleJob = {
      id,
      runId: this.#nextId++,
      runAttempt: 1,
      labels,
      repo: r.fullName,
      repoId: r.id,
      private: r.private,
      ownerType: r.ownerType,
      installationId: o.installationId ?? r.installationId,
      status: o.waiting ? 'waiting' : 'queued',
      headRepo: o.headRepo ?? r.fullName,
      event: o.event ?? ((o.headRepo ?? r.fullName) === r.fullName ? 'push' : 'pull_request'),
      headBranch: o.headBranch ?? r.defaultBranch,
      headSha: o.headSha ?? DOUBLE_HEAD_SHA,
      runnerId: null,
      runnerName: null,
      conclusion: null,
    };
    this.jobs.set(id, job);
    if (o.send !== false) await this.sendWebhook(job, o.waiting ? 'waiting' : 'queued', { drop: o.drop === true });
    this.#wake();
    return job;
  }

  /** The job is picked up by a runner that is not kiln's (another pool, GitHub-hosted). */
  async takeElsewhere(jobId: number, runnerName = 'other-pool-7'): Promise<void> {
    const j = this.#job(jobId);
    j.status = 'in_progress';
    j.runnerId = 99999;
    j.runnerName = runnerName;
    await this.sendWebhook(j, 'in_progress');
  }

  /** The job is cancelled; a queued job's completion has no runner. */
  async cancel(jobId: number): Promise<void> {
    const j = this.#job(jobId);
    j.status = 'completed';
    j.conclusion = 'cancelled';
    await this.sendWebhook(j, 'completed');
    this.#wake();
  }

  /** GitHub gives up on a running job (its runner died): the job fails, the runner is no longer busy. */
  async failJob(jobId: number): Promise<void> {
    const j = this.#job(jobId);
    j.status = 'completed';
    j.conclusion = 'failure';
    for (const r of this.runners.values()) if (r.jobId === jobId) r.busy = false;
    await this.sendWebhook(j, 'completed');
  }

  /** The registration disappears on GitHub (the VM keeps running). */
  vanishRunner(id: number): void {
    this.runners.delete(id);
    this.#wake();
  }

  /** Builds, validates, signs and posts a webhook; records it in the App's delivery list. */
  async sendWebhook(job: DoubleJob, action: 'queued' | 'waiting' | 'in_progress' | 'completed', o: { drop?: boolean; guid?: string } = {}): Promise<DoubleDelivery> {
    const payload = workflowJobPayload(action, job);
    const bad = check(webhookPointer(action), payload);
    if (bad) this.violations.push(`webhook ${action}: ${bad}`);
    // statusCode -1: in flight (not listed as failed until the attempt ends).
    const d: DoubleDelivery = { id: this.#nextId++, guid: o.guid ?? randomUUID(), action, body: JSON.stringify(payload), statusCode: -1, deliveredAt: new Date().toISOString(), redelivery: false };
    this.deliveries.push(d);
    if (o.drop || this.faults.dropActions.has(action)) {
      d.statusCode = 502;
      return d;
    }
    d.statusCode = await this.post(d);
    return d;
  }

  async post(d: DoubleDelivery, secret = this.#opts.webhookSecret): Promise<number> {
    if (!this.webhookUrl) return 0;
    try {
      const res = await fetch(this.webhookUrl, {
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          'user-agent': 'GitHub-Hookshot/double',
          'x-github-event': 'workflow_job',
          'x-github-delivery': d.guid,
          'x-github-hook-id': '1',
          'x-github-hook-installation-target-type': 'integration',
          'x-github-hook-installation-target-id': this.#opts.appId,
          'x-hub-signature-256': signBody(secret, d.body),
        },
        body: d.body,
      });
      await res.arrayBuffer();
      return res.status;
    } catch {
      return 0;
    }
  }

  #job(id: number): DoubleJob {
    const j = this.jobs.get(id);
    if (!j) throw new Error(`no job ${id}`);
    return j;
  }

  #wake(): void {
    for (const w of [...this.#waiters]) w();
  }

  // ---- HTTP -----------------------------------------------------------------------------------------
  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const raw = Buffer.concat(chunks).toString('utf8');
    const u = new URL(req.url ?? '/', 'http://x');
    const method = (req.method ?? 'GET').toLowerCase();
    if (u.pathname.startsWith('/_runner/')) return this.#runnerProtocol(u.pathname, raw, req, res);
    const route = ROUTES.find((r) => r.method === method && r.re.test(u.pathname));
    const send = (status: number, body?: unknown, headers: Record<string, string> = {}) => {
      this.calls.push({ method: method.toUpperCase(), path: u.pathname, status, at: Date.now() });
      if (route && body !== undefined) {
        const ptr = responsePointer(route.path, method, status);
        if (ptr) {
          const bad = check(ptr, body);
          if (bad) this.violations.push(`response ${method.toUpperCase()} ${route.path} ${status}: ${bad}`);
        } else if (status < 300) this.violations.push(`response ${method.toUpperCase()} ${route.path} ${status}: no such response in the description`);
      }
      res.writeHead(status, { 'content-type': 'application/json', ...headers });
      res.end(body === undefined ? undefined : JSON.stringify(body));
    };
    const error = (status: number, message: string) =>
      send(status, status === 422 && route?.path.includes('generate-jitconfig') ? { message, documentation_url: 'https://docs.github.com/rest' } : { message, documentation_url: 'https://docs.github.com/rest', status: String(status) });
    if (!route) {
      this.violations.push(`request ${method.toUpperCase()} ${u.pathname}: not an endpoint the double knows`);
      return send(404, { message: 'Not Found', documentation_url: 'https://docs.github.com/rest' });
    }
    if (!hasOperation(route.path, method)) this.violations.push(`route ${route.path} ${method} is not in GitHub's description`);
    for (const f of this.faults.fail) {
      if (f.left > 0 && f.re.test(u.pathname)) {
        f.left--;
        return send(f.status, { message: f.message ?? 'Server Error', documentation_url: 'https://docs.github.com/rest' }, f.headers);
      }
    }
    let body: unknown = undefined;
    if (raw) {
      try {
        body = JSON.parse(raw);
      } catch {
        return error(400, 'Problems parsing JSON');
      }
    }
    if (body !== undefined || route.needsBody) {
      const bad = check(requestPointer(route.path, method), body ?? {});
      if (bad) {
        this.violations.push(`request ${method.toUpperCase()} ${route.path}: ${bad}`);
        return error(422, `Invalid request. ${bad}`);
      }
    }
    const auth = req.headers.authorization ?? '';
    const params = route.re.exec(u.pathname)?.groups ?? {};
    if (route.auth === 'jwt') {
      const why = this.#checkJwt(auth);
      if (why) return error(401, why);
    } else {
      const m = /^(?:token|Bearer) (.+)$/.exec(auth);
      const t = m?.[1] ? this.tokens.get(m[1]) : undefined;
      if (!t) return error(401, 'Bad credentials');
      if (t.expiresAt <= Date.now()) return error(401, 'Bad credentials');
    }
    try {
      await route.handle.call(this, { params, query: u.searchParams, body, send, error });
    } catch (e) {
      this.violations.push(`double crashed on ${method} ${u.pathname}: ${(e as Error).stack ?? String(e)}`);
      send(500, { message: 'double crashed' });
    }
  }

  #checkJwt(auth: string): string | undefined {
    const m = /^Bearer ([\w-]+)\.([\w-]+)\.([\w-]+)$/.exec(auth);
    if (!m) return 'A JSON web token could not be decoded';
    const [, h, p, s] = m;
    const ok = createVerify('RSA-SHA256').update(`${h}.${p}`).verify(this.#opts.publicKey, Buffer.from(s!, 'base64url'));
    if (!ok) return 'A JSON web token could not be decoded';
    const head = JSON.parse(Buffer.from(h!, 'base64url').toString()) as { alg: string };
    const c = JSON.parse(Buffer.from(p!, 'base64url').toString()) as { iat: number; exp: number; iss: string | number };
    const now = Math.floor(Date.now() / 1000);
    if (head.alg !== 'RS256') return 'alg must be RS256';
    if (String(c.iss) !== this.#opts.appId) return "'Issuer' claim ('iss') must be an Integer";
    if (c.exp <= now) return "'Expiration time' claim ('exp') is too far in the future or expired";
    if (c.exp - c.iat > 660 || c.iat > now + 5) return "'Issued at' claim ('iat') must be an Integer representing a time in the past";
    return undefined;
  }

  /** Every installation token expires now, earlier than the client expects (clock skew, revocation). */
  expireTokens(): void {
    for (const t of this.tokens.values()) t.expiresAt = Date.now();
  }

  mintToken(installationId: number): { token: string; expires_at: string } {
    const token = `ghs_${randomBytes(18).toString('base64url')}`;
    const expiresAt = Date.now() + (this.#opts.tokenTtlMs ?? 3600_000);
    this.tokens.set(token, { installationId, expiresAt });
    return { token, expires_at: new Date(expiresAt).toISOString() };
  }

  installation(id: number, account: string): Record<string, unknown> {
    return {
      id,
      account: account ? userJson(account, 'Organization') : null,
      repository_selection: 'all',
      access_tokens_url: `https://api.github.com/app/installations/${id}/access_tokens`,
      repositories_url: 'https://api.github.com/installation/repositories',
      html_url: `https://github.com/settings/installations/${id}`,
      app_id: Number(this.#opts.appId),
      target_id: 1,
      target_type: 'Organization',
      permissions: { administration: 'write', actions: 'read', contents: 'read', metadata: 'read', organization_self_hosted_runners: 'write' },
      events: ['workflow_job'],
      created_at: '2024-01-01T00:00:00Z',
      updated_at: '2024-01-01T00:00:00Z',
      single_file_name: null,
      app_slug: 'kiln',
      suspended_by: null,
      suspended_at: null,
    };
  }

  registerRunner(scope: string, name: string, labels: string[]): DoubleRunner | 'exists' {
    if ([...this.runners.values()].some((r) => r.name === name && r.scope === scope)) return 'exists';
    const r: DoubleRunner = { id: this.#nextId++, name, scope, labels, status: 'offline', busy: false, secret: randomBytes(12).toString('hex'), jobId: null, sessions: 0 };
    this.runners.set(r.id, r);
    this.registeredNames.push(name);
    this.registeredAt.set(name, Date.now());
    return r;
  }

  jitConfig(r: DoubleRunner): string {
    const files = {
      '.runner': Buffer.from(JSON.stringify({ agentId: r.id, agentName: r.name, serverUrl: this.runnerUrl ?? this.url, workFolder: '_work' })).toString('base64'),
      '.credentials': Buffer.from(JSON.stringify({ scheme: 'OAuthAccessToken', data: { secret: r.secret } })).toString('base64'),
    };
    const encoded = Buffer.from(JSON.stringify(files)).toString('base64');
    this.issuedJitConfigs.push(encoded);
    return encoded;
  }

  // ---- the stand-in runner's side ------------------------------------------------------------------
  async #runnerProtocol(path: string, raw: string, req: IncomingMessage, res: ServerResponse): Promise<void> {
    const b = (raw ? JSON.parse(raw) : {}) as { runnerId?: number; secret?: string; jobId?: number };
    const reply = (status: number, body: unknown) => {
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(body));
    };
    const r = b.runnerId === undefined ? undefined : this.runners.get(b.runnerId);
    if (path === '/_runner/connect') {
      if (!r) return reply(404, { error: 'runner not registered' });
      if (r.secret !== b.secret) return reply(401, { error: 'bad runner credentials' });
      if (this.faults.neverConnect) return reply(503, { error: 'cannot connect' });
      return reply(200, { ok: true });
    }
    if (path === '/_runner/next') {
      // A long poll: the runner is online while it holds one; it goes offline when its VM dies.
      if (!r) return reply(200, { exit: 'removed' });
      r.sessions++;
      if (!r.hung) r.status = 'online';
      let closed = false;
      res.on('close', () => {
        closed = true;
        r.sessions--;
        if (r.sessions === 0 && this.runners.get(r.id) === r && !res.writableEnded) r.status = 'offline';
        this.#wake();
      });
      const deadline = Date.now() + 2000;
      while (!closed) {
        if (this.runners.get(r.id) !== r) return reply(200, { exit: 'removed' });
        const job = this.faults.holdJobs || r.hung || this.faults.heldRunners.has(r.name) ? undefined : this.#assignable(r);
        if (job) {
          r.busy = true;
          r.jobId = job.id;
          job.status = 'in_progress';
          job.runnerId = r.id;
          job.runnerName = r.name;
          reply(200, { job: job.id, ms: this.#opts.jobMs ?? 50 });
          await this.sendWebhook(job, 'in_progress');
          return;
        }
        if (Date.now() > deadline) return reply(200, { wait: true });
        await new Promise<void>((wake) => {
          const t = setTimeout(done, 200);
          const self = this;
          function done() {
            clearTimeout(t);
            self.#waiters.delete(done);
            wake();
          }
          this.#waiters.add(done);
        });
      }
      return;
    }
    if (path === '/_runner/done') {
      const job = b.jobId === undefined ? undefined : this.jobs.get(b.jobId);
      if (job && job.status === 'in_progress') {
        job.status = 'completed';
        job.conclusion = 'success';
        await this.sendWebhook(job, 'completed');
      }
      // Ephemeral: the service removes the runner once its job is done.
      if (r) this.runners.delete(r.id);
      return reply(200, { exit: 'done' });
    }
    void req;
    reply(404, { error: 'no such runner endpoint' });
  }

  #assignable(r: DoubleRunner): DoubleJob | undefined {
    const have = new Set(r.labels.map((l) => l.toLowerCase()));
    const jobs = [...this.jobs.values()];
    if (this.faults.newestFirst) jobs.reverse();
    for (const j of jobs) {
      if (j.status !== 'queued') continue;
      const inScope = r.scope.includes('/') ? j.repo.toLowerCase() === r.scope.toLowerCase() : j.repo.toLowerCase().startsWith(`${r.scope.toLowerCase()}/`);
      if (inScope && j.labels.every((l) => have.has(l.toLowerCase()))) return j;
    }
    return undefined;
  }
}

// ---- REST routes --------------------------------------------------------------------------------------
interface Ctx {
  params: Record<string, string>;
  query: URLSearchParams;
  body: unknown;
  send(status: number, body?: unknown, headers?: Record<string, string>): void;
  error(status: number, message: string): void;
}
interface Route {
  method: string;
  path: string;
  re: RegExp;
  auth: 'jwt' | 'installation';
  needsBody?: boolean;
  handle(this: GitHubDouble, c: Ctx): Promise<void> | void;
}

const toRe = (p: string) => new RegExp(`^${p.replace(/\{(\w+)\}/g, '(?<$1>[^/]+)')}$`);
const route = (method: string, path: string, auth: Route['auth'], handle: Route['handle'], needsBody = false): Route => ({ method, path, re: toRe(path), auth, handle, needsBody });

function userJson(login: string, type: string): Record<string, unknown> {
  return {
    login,
    id: 1,
    node_id: 'MDQ6VXNlcjE=',
    avatar_url: '',
    gravatar_id: '',
    url: `https://api.github.com/users/${login}`,
    html_url: `https://github.com/${login}`,
    followers_url: '',
    following_url: '',
    gists_url: '',
    starred_url: '',
    subscriptions_url: '',
    organizations_url: '',
    repos_url: '',
    events_url: '',
    received_events_url: '',
    type,
    site_admin: false,
  };
}

function runnerJson(r: DoubleRunner): Record<string, unknown> {
  const readOnly = new Set(['self-hosted', 'linux', 'x64', 'arm64']);
  return {
    id: r.id,
    name: r.name,
    os: 'linux',
    status: r.status,
    busy: r.busy,
    ephemeral: true,
    runner_group_id: 1,
    labels: r.labels.map((l, i) => ({ id: i + 1, name: l, type: readOnly.has(l.toLowerCase()) ? 'read-only' : 'custom' })),
  };
}

function jobJson(j: DoubleJob): Record<string, unknown> {
  const done = j.status === 'completed';
  return {
    id: j.id,
    run_id: j.runId,
    run_url: `https://api.github.com/repos/${j.repo}/actions/runs/${j.runId}`,
    run_attempt: j.runAttempt,
    node_id: 'CR_kwDOA',
    head_sha: j.headSha,
    url: `https://api.github.com/repos/${j.repo}/actions/jobs/${j.id}`,
    html_url: `https://github.com/${j.repo}/actions/runs/${j.runId}/job/${j.id}`,
    status: j.status,
    conclusion: done ? (j.conclusion ?? 'success') : null,
    created_at: '2024-01-01T00:00:00Z',
    started_at: '2024-01-01T00:00:00Z',
    completed_at: done ? '2024-01-01T00:01:00Z' : null,
    name: 'build',
    steps: [],
    check_run_url: `https://api.github.com/repos/${j.repo}/check-runs/${j.id}`,
    labels: j.labels,
    runner_id: j.runnerId,
    runner_name: j.runnerName,
    runner_group_id: j.runnerId === null ? null : 1,
    runner_group_name: j.runnerId === null ? null : 'Default',
    workflow_name: 'CI',
    head_branch: j.headBranch,
  };
}

function minimalRepo(fullName: string, id: number, isPrivate: boolean): Record<string, unknown> {
  const [owner = '', name = ''] = fullName.split('/');
  const u = `https://api.github.com/repos/${fullName}`;
  const urls = Object.fromEntries(
    ['archive', 'assignees', 'blobs', 'branches', 'collaborators', 'comments', 'commits', 'compare', 'contents', 'contributors', 'deployments', 'downloads', 'events', 'forks', 'git_commits', 'git_refs', 'git_tags', 'issue_comment', 'issue_events', 'issues', 'keys', 'labels', 'languages', 'merges', 'milestones', 'notifications', 'pulls', 'releases', 'stargazers', 'statuses', 'subscribers', 'subscription', 'tags', 'teams', 'trees', 'hooks'].map((k) => [`${k}_url`, `${u}/${k}`]),
  );
  return { id, node_id: 'R_1', name, full_name: fullName, owner: userJson(owner, 'Organization'), private: isPrivate, html_url: `https://github.com/${fullName}`, description: null, fork: false, url: u, git_url: '', ssh_url: '', clone_url: '', svn_url: '', mirror_url: null, ...urls };
}

/** A full-repository object (GET /repos/{owner}/{repo}), as GitHub's description requires one. */
function fullRepo(r: DoubleRepo): Record<string, unknown> {
  const at = '2024-01-01T00:00:00Z';
  return {
    ...minimalRepo(r.fullName, r.id, r.private),
    owner: userJson(r.fullName.split('/')[0] ?? '', r.ownerType),
    clone_url: `https://github.com/${r.fullName}.git`,
    git_url: `git://github.com/${r.fullName}.git`,
    ssh_url: `git@github.com:${r.fullName}.git`,
    svn_url: `https://github.com/${r.fullName}`,
    default_branch: r.defaultBranch,
    forks: 0,
    forks_count: 0,
    has_issues: true,
    has_projects: false,
    has_wiki: false,
    has_pages: false,
    has_discussions: false,
    homepage: null,
    language: 'TypeScript',
    archived: false,
    disabled: false,
    open_issues: 0,
    open_issues_count: 0,
    license: null,
    pushed_at: at,
    size: 1,
    stargazers_count: 0,
    watchers: 0,
    watchers_count: 0,
    created_at: at,
    updated_at: at,
    network_count: 0,
    subscribers_count: 0,
    visibility: r.private ? 'private' : 'public',
  };
}

/** A Git reference object (GET …/git/ref/{ref}): `heads/NAME` or `tags/NAME`. */
function gitRefJson(repo: string, ref: string, sha: string): Record<string, unknown> {
  const u = `https://api.github.com/repos/${repo}`;
  return { ref: `refs/${ref}`, node_id: 'REF_1', url: `${u}/git/refs/${ref}`, object: { type: 'commit', sha, url: `${u}/git/commits/${sha}` } };
}

function runJson(j: DoubleJob, d: GitHubDouble): Record<string, unknown> {
  const repo = d.repos.get(j.repo.toLowerCase())!;
  const head = d.repos.get(j.headRepo.toLowerCase());
  return {
    id: j.runId,
    name: 'CI',
    node_id: 'WFR_1',
    head_branch: j.headBranch,
    head_sha: j.headSha,
    path: '.github/workflows/ci.yml',
    run_number: 1,
    run_attempt: j.runAttempt,
    event: j.event,
    status: j.status === 'waiting' ? 'waiting' : j.status,
    conclusion: null,
    workflow_id: 1,
    url: `https://api.github.com/repos/${j.repo}/actions/runs/${j.runId}`,
    html_url: `https://github.com/${j.repo}/actions/runs/${j.runId}`,
    pull_requests: [],
    created_at: '2024-01-01T00:00:00Z',
    updated_at: '2024-01-01T00:00:00Z',
    jobs_url: '',
    logs_url: '',
    check_suite_url: '',
    artifacts_url: '',
    cancel_url: '',
    rerun_url: '',
    workflow_url: '',
    head_commit: null,
    repository: minimalRepo(repo.fullName, repo.id, repo.private),
    head_repository: minimalRepo(j.headRepo, head?.id ?? 999, false),
    display_title: 'CI',
  };
}

const scopeOf = (p: Record<string, string>) => (p.repo ? `${p.owner}/${p.repo}` : (p.org ?? ''));

function runnerRoutes(prefix: string): Route[] {
  return [
    route(
      'post',
      `${prefix}/actions/runners/generate-jitconfig`,
      'installation',
      function (c) {
        const b = c.body as { name: string; labels: string[] };
        const r = this.registerRunner(scopeOf(c.params), b.name, b.labels);
        if (r === 'exists') return c.error(409, `A runner with the name ${b.name} already exists.`);
        if (this.faults.jitConflict > 0) {
          this.faults.jitConflict--;
          return c.error(409, `A runner with the name ${b.name} already exists.`);
        }
        c.send(201, { runner: runnerJson(r), encoded_jit_config: this.jitConfig(r) });
      },
      true,
    ),
    route('get', `${prefix}/actions/runners`, 'installation', function (c) {
      const name = c.query.get('name');
      const list = [...this.runners.values()].filter((r) => r.scope === scopeOf(c.params) && (!name || r.name === name));
      const per = Number(c.query.get('per_page') ?? 30);
      const page = Number(c.query.get('page') ?? 1);
      c.send(200, { total_count: list.length, runners: list.slice((page - 1) * per, page * per).map(runnerJson) });
    }),
    route('get', `${prefix}/actions/runners/{runner_id}`, 'installation', function (c) {
      const r = this.runners.get(Number(c.params.runner_id));
      if (!r || r.scope !== scopeOf(c.params)) return c.error(404, 'Not Found');
      c.send(200, runnerJson(r));
    }),
    route('delete', `${prefix}/actions/runners/{runner_id}`, 'installation', function (c) {
      const r = this.runners.get(Number(c.params.runner_id));
      if (!r || r.scope !== scopeOf(c.params)) return c.error(404, 'Not Found');
      if (r.busy) return c.error(422, 'Bad request - Runner is busy');
      this.runners.delete(r.id);
      c.send(204);
    }),
  ];
}

const ROUTES: Route[] = [
  route('post', '/app/installations/{installation_id}/access_tokens', 'jwt', function (c) {
    const id = Number(c.params.installation_id);
    if (this.staleInstallations.has(id)) return c.error(404, 'Not Found');
    c.send(201, { ...this.mintToken(id), permissions: { administration: 'write', actions: 'read' }, repository_selection: 'all' });
  }),
  route('get', '/repos/{owner}/{repo}/installation', 'jwt', function (c) {
    const r = this.repos.get(`${c.params.owner}/${c.params.repo}`.toLowerCase());
    if (!r) return c.error(404, 'Not Found');
    const current = this.staleInstallations.get(r.installationId) ?? r.installationId;
    c.send(200, this.installation(current, c.params.owner ?? ''));
  }),
  route('get', '/repos/{owner}/{repo}/actions/jobs/{job_id}', 'installation', function (c) {
    const j = this.jobs.get(Number(c.params.job_id));
    if (!j) return c.error(404, 'Not Found');
    c.send(200, jobJson(j));
  }),
  route('get', '/repos/{owner}/{repo}/actions/runs/{run_id}', 'installation', function (c) {
    const j = [...this.jobs.values()].find((x) => x.runId === Number(c.params.run_id));
    if (!j) return c.error(404, 'Not Found');
    c.send(200, runJson(j, this));
  }),
  route('get', '/repos/{owner}/{repo}', 'installation', function (c) {
    const r = this.repos.get(`${c.params.owner}/${c.params.repo}`.toLowerCase());
    if (!r) return c.error(404, 'Not Found');
    c.send(200, fullRepo(r));
  }),
  // {ref} is `heads/NAME` or `tags/NAME`, and a name may hold slashes (release/v1): the one route whose
  // parameter spans path segments. An exact match only, as GitHub's "Get a reference" answers.
  {
    ...route('get', '/repos/{owner}/{repo}/git/ref/{ref}', 'installation', function (c) {
      const r = this.repos.get(`${c.params.owner}/${c.params.repo}`.toLowerCase());
      if (!r) return c.error(404, 'Not Found');
      const ref = (c.params.ref ?? '').split('/').map(decodeURIComponent).join('/');
      const m = /^(heads|tags)\/(.+)$/.exec(ref);
      const name = m?.[2] ?? '';
      const sha = m?.[1] === 'tags' ? r.tags.get(name) : m?.[1] === 'heads' ? (name === r.defaultBranch ? (r.branches.get(name) ?? DOUBLE_HEAD_SHA) : r.branches.get(name)) : undefined;
      if (!sha) return c.error(404, 'Not Found');
      c.send(200, gitRefJson(r.fullName, ref, sha));
    }),
    re: /^\/repos\/(?<owner>[^/]+)\/(?<repo>[^/]+)\/git\/ref\/(?<ref>.+)$/,
  },
  route('get', '/app/hook/deliveries', 'jwt', function (c) {
    const failedOnly = c.query.get('status') === 'failure';
    const list = [...this.deliveries].reverse().filter((d) => d.statusCode !== -1 && (!failedOnly || d.statusCode < 200 || d.statusCode >= 300));
    c.send(
      200,
      list.map((d) => ({
        id: d.id,
        guid: d.guid,
        delivered_at: d.deliveredAt,
        redelivery: d.redelivery,
        duration: 0.1,
        status: d.statusCode >= 200 && d.statusCode < 300 ? 'OK' : 'failed',
        status_code: d.statusCode,
        event: 'workflow_job',
        action: d.action,
        installation_id: 42,
        repository_id: null,
        throttled_at: null,
      })),
    );
  }),
  route('post', '/app/hook/deliveries/{delivery_id}/attempts', 'jwt', async function (c) {
    const d = this.deliveries.find((x) => x.id === Number(c.params.delivery_id));
    if (!d) return c.error(404, 'Not Found');
    c.send(202, {});
    const again: DoubleDelivery = { ...d, id: d.id + 1_000_000 + this.deliveries.length, redelivery: true, deliveredAt: new Date().toISOString(), statusCode: -1 };
    this.deliveries.push(again);
    again.statusCode = await this.post(again);
  }),
  ...runnerRoutes('/repos/{owner}/{repo}'),
  ...runnerRoutes('/orgs/{org}'),
];
