/**
 * The `GitHubApi` port (what kiln asks of GitHub) and its HTTP implementation: an App JWT (RS256, iat 60 s in
 * the past, 9 min life) for /app/** and installation lookups; installation tokens for everything else,
 * cached per installation and refreshed ahead of expiry, refreshed once on a 401; a stale installation id
 * (404 minting a token) re-resolved once through GET /repos/{o}/{r}/installation. Errors are KilnErrors with
 * `github.*` codes; the error catalogue (core/error-catalogue.ts) says which ones a later pass should retry.
 */
import { createSign } from 'node:crypto';
import type { Logger } from 'pino';
import { KilnError } from '../../core/errors.ts';

export interface Scope {
  level: 'repo' | 'org';
  owner: string;
  /** Repository name (without owner), for repo-level runners. */
  repo: string | null;
}

/** Which installation to act as, and the repository to re-resolve it through when it went stale. */
export interface Installation {
  id: number;
  owner: string;
  repo: string;
}

export interface GhRunner {
  id: number;
  name: string;
  status: string;
  busy: boolean;
  labels: string[];
}

/** A job as GitHub reports it on a re-read. */
export interface GhJobStatus {
  status: string;
  runnerName: string | null;
  conclusion: string | null;
  startedAt: string | null;
  completedAt: string | null;
}

export interface GhDelivery {
  id: number;
  guid: string;
  event: string;
  action: string | null;
  statusCode: number;
  redelivery: boolean;
  deliveredAt: string;
}

export interface GitHubApi {
  getJob(inst: Installation, jobId: number): Promise<GhJobStatus | null>;
  getRun(inst: Installation, runId: number): Promise<{ headRepo: string | null; event: string; headBranch?: string | null; headSha?: string | null } | null>;
  /** The repository's default branch (GET /repos/{owner}/{repo}); null when it cannot be read. */
  getDefaultBranch(inst: Installation): Promise<string | null>;
  /**
   * Does the exact ref `heads/NAME` or `tags/NAME` exist (GET /repos/{owner}/{repo}/git/ref/{ref}, the App's
   * Contents read permission)? Throws when GitHub does not say (403 without that permission, 5xx).
   */
  refExists(inst: Installation, ref: string): Promise<boolean>;
  generateJitConfig(inst: Installation, scope: Scope, body: { name: string; labels: string[]; runnerGroupId: number }): Promise<{ runnerId: number; encodedJitConfig: string }>;
  listRunners(inst: Installation, scope: Scope, name?: string): Promise<GhRunner[]>;
  getRunner(inst: Installation, scope: Scope, runnerId: number): Promise<GhRunner | null>;
  /** 'deleted', or 'gone' (404: already removed). A busy runner throws github.runner_busy. */
  deleteRunner(inst: Installation, scope: Scope, runnerId: number): Promise<'deleted' | 'gone'>;
  listFailedDeliveries(sinceMs: number): Promise<GhDelivery[]>;
  redeliver(deliveryId: number): Promise<void>;
}


export interface GitHubClientOptions {
  apiUrl: string;
  appId: string;
  clientId?: string | undefined;
  privateKey: string;
  log: Logger;
  now?: () => number;
  /** Refresh an installation token when less than this is left (default 5 min). */
  refreshAheadMs?: number;
  /** Per-request timeout (default 15 s). */
  timeoutMs?: number;
}

/**
 * How long GitHub asks kiln to wait, from a response (GitHub's REST rate-limit rules): `retry-after` seconds
 * when present; else until `x-ratelimit-reset` when `x-ratelimit-remaining` is 0; else a minute for a 429 (a
 * secondary limit without headers). Undefined: not a rate-limit answer. A 403 without these headers is a
 * permission answer, not a limit.
 */
export function rateLimitWait(status: number, headers: { get(name: string): string | null }, nowMs: number): number | undefined {
  if (status !== 403 && status !== 429) return undefined;
  const retryAfter = Number(headers.get('retry-after') ?? NaN);
  if (Number.isFinite(retryAfter) && retryAfter >= 0) return Math.max(1000, retryAfter * 1000);
  if (headers.get('x-ratelimit-remaining') === '0') {
    const reset = Number(headers.get('x-ratelimit-reset') ?? NaN) * 1000;
    return Number.isFinite(reset) ? Math.max(1000, reset - nowMs) : 60_000;
  }
  return status === 429 ? 60_000 : undefined;
}

const b64url = (b: Buffer | string) => Buffer.from(b).toString('base64url');

export function makeAppJwt(o: { issuer: string; privateKey: string; nowMs: number }): string {
  const now = Math.floor(o.nowMs / 1000);
  const head = b64url(JSON.stringify({ alg: 'RS256', typ: 'JWT' }));
  const body = b64url(JSON.stringify({ iat: now - 60, exp: now + 540, iss: o.issuer }));
  const sig = createSign('RSA-SHA256').update(`${head}.${body}`).sign(o.privateKey);
  return `${head}.${body}.${b64url(sig)}`;
}

interface Res {
  status: number;
  body: unknown;
  link: string | null;
}

export function makeGitHubClient(o: GitHubClientOptions): GitHubApi & { tokenMints(): number } {
  const now = o.now ?? Date.now;
  const refreshAhead = o.refreshAheadMs ?? 5 * 60_000;
  const tokens = new Map<number, { token: string; expiresAt: number }>();
  const remap = new Map<number, number>();
  let jwt: { value: string; until: number } | undefined;
  let mints = 0;
  const log = o.log.child({ part: 'github-api' });

  const appJwt = (): string => {
    const t = now();
    if (!jwt || jwt.until < t) jwt = { value: makeAppJwt({ issuer: o.clientId ?? o.appId, privateKey: o.privateKey, nowMs: t }), until: t + 5 * 60_000 };
    return jwt.value;
  };

  async function call(method: string, path: string, auth: string, body?: unknown): Promise<Res> {
    let res: Response;
    try {
      res = await fetch(`${o.apiUrl}${path}`, {
        method,
        headers: {
          accept: 'application/vnd.github+json',
          'x-github-api-version': '2022-11-28',
          'user-agent': 'kiln',
          authorization: auth,
          ...(body === undefined ? {} : { 'content-type': 'application/json' }),
        },
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
        signal: AbortSignal.timeout(o.timeoutMs ?? 15_000),
      });
    } catch (e) {
      throw new KilnError('github.unavailable', `GitHub API ${method} ${path.split('?')[0]} failed: ${(e as Error).message}`, { cause: e, kind: 'unavailable' });
    }
    const text = await res.text();
    let parsed: unknown = undefined;
    if (text) {
      try {
        parsed = JSON.parse(text);
      } catch {
        parsed = text;
      }
    }
    const limitedFor = rateLimitWait(res.status, res.headers, now());
    if (limitedFor !== undefined) {
      throw new KilnError('github.rate_limited', `GitHub API ${method} ${path.split('?')[0]} answered ${res.status}: rate limited for ${Math.ceil(limitedFor / 1000)} s`, {
        kind: 'unavailable',
        details: { retryAfterMs: limitedFor },
      });
    }
    if (res.status >= 500) throw new KilnError('github.unavailable', `GitHub API ${method} ${path.split('?')[0]} answered ${res.status}`, { kind: 'unavailable' });
    return { status: res.status, body: parsed, link: res.headers.get('link') };
  }

  const fail = (what: string, r: Res): never => {
    const msg = (r.body as { message?: string } | undefined)?.message ?? '';
    if (r.status === 401) throw new KilnError('github.auth_failed', `GitHub refused kiln's credentials for ${what}${msg ? `: ${msg}` : ''}`, { kind: 'unavailable', hint: 'check the App id, client id and private key' });
    if (r.status === 403) throw new KilnError('github.forbidden', `GitHub forbids ${what}${msg ? `: ${msg}` : ''}`, { hint: 'the App needs Administration (repo) or Self-hosted runners (org) write, and Actions read' });
    throw new KilnError('github.unexpected', `GitHub answered ${r.status} to ${what}${msg ? `: ${msg}` : ''}`, { kind: 'internal' });
  };

  async function resolveInstallation(inst: Installation): Promise<number> {
    const r = await call('GET', `/repos/${inst.owner}/${inst.repo}/installation`, `Bearer ${appJwt()}`);
    if (r.status !== 200) {
      if (r.status === 404) throw new KilnError('github.not_installed', `the GitHub App is not installed on ${inst.owner}/${inst.repo}`, { hint: 'install the App on the repository or its organization' });
      fail('the installation lookup', r);
    }
    const id = (r.body as { id: number }).id;
    log.info({ stale: inst.id, installationId: id }, 'installation id re-resolved');
    remap.set(inst.id, id);
    return id;
  }

  async function mint(inst: Installation, allowResolve: boolean): Promise<string> {
    const id = remap.get(inst.id) ?? inst.id;
    const r = await call('POST', `/app/installations/${id}/access_tokens`, `Bearer ${appJwt()}`, {});
    if (r.status === 404 && allowResolve) {
      await resolveInstallation(inst);
      return mint(inst, false);
    }
    if (r.status !== 201) fail('an installation token', r);
    const b = r.body as { token: string; expires_at: string };
    mints++;
    tokens.set(id, { token: b.token, expiresAt: Date.parse(b.expires_at) });
    return b.token;
  }

  async function token(inst: Installation): Promise<string> {
    const id = remap.get(inst.id) ?? inst.id;
    const t = tokens.get(id);
    if (t && t.expiresAt - now() > refreshAhead) return t.token;
    return mint(inst, true);
  }

  /** An installation-token request; a 401 drops the cached token and retries once with a fresh one. */
  async function inst(i: Installation, method: string, path: string, body?: unknown): Promise<Res> {
    const r = await call(method, path, `token ${await token(i)}`, body);
    if (r.status !== 401) return r;
    tokens.delete(remap.get(i.id) ?? i.id);
    return call(method, path, `token ${await token(i)}`, body);
  }

  const base = (s: Scope) => (s.level === 'org' ? `/orgs/${s.owner}` : `/repos/${s.owner}/${s.repo}`);
  const runnerOf = (r: { id: number; name: string; status: string; busy: boolean; labels: { name: string }[] }): GhRunner => ({
    id: r.id,
    name: r.name,
    status: r.status,
    busy: r.busy,
    labels: r.labels.map((l) => l.name),
  });

  return {
    tokenMints: () => mints,
    async getJob(i, jobId) {
      const r = await inst(i, 'GET', `/repos/${i.owner}/${i.repo}/actions/jobs/${jobId}`);
      if (r.status === 404) return null;
      if (r.status !== 200) fail(`reading job ${jobId}`, r);
      const b = r.body as { status: string; runner_name?: string | null; conclusion?: string | null; started_at?: string | null; completed_at?: string | null };
      return { status: b.status, runnerName: b.runner_name ?? null, conclusion: b.conclusion ?? null, startedAt: b.started_at ?? null, completedAt: b.completed_at ?? null };
    },
    async getRun(i, runId) {
      const r = await inst(i, 'GET', `/repos/${i.owner}/${i.repo}/actions/runs/${runId}`);
      if (r.status === 404) return null;
      if (r.status !== 200) fail(`reading run ${runId}`, r);
      const b = r.body as { event: string; head_repository?: { full_name: string } | null; head_branch?: string | null; head_sha?: string | null };
      return { event: b.event, headRepo: b.head_repository?.full_name ?? null, headBranch: b.head_branch ?? null, headSha: b.head_sha ?? null };
    },
    async getDefaultBranch(i) {
      const r = await inst(i, 'GET', `/repos/${i.owner}/${i.repo}`);
      if (r.status !== 200) return null;
      const b = r.body as { default_branch?: unknown };
      return typeof b.default_branch === 'string' ? b.default_branch : null;
    },
    async refExists(i, ref) {
      const path = ref.split('/').map(encodeURIComponent).join('/');
      const r = await inst(i, 'GET', `/repos/${i.owner}/${i.repo}/git/ref/${path}`);
      if (r.status === 200) return true;
      if (r.status === 404) return false;
      if (r.status === 403) {
        const msg = (r.body as { message?: string } | undefined)?.message ?? '';
        throw new KilnError('github.forbidden', `GitHub forbids reading refs/${ref}${msg ? `: ${msg}` : ''}`, { hint: 'grant the App the Contents (read) repository permission' });
      }
      return fail(`reading refs/${ref}`, r);
    },
    async generateJitConfig(i, s, body) {
      const r = await inst(i, 'POST', `${base(s)}/actions/runners/generate-jitconfig`, { name: body.name, runner_group_id: body.runnerGroupId, labels: body.labels });
      if (r.status === 409) throw new KilnError('github.runner_exists', `a runner named ${body.name} already exists`, { kind: 'unavailable' });
      if (r.status !== 201) fail('a runner registration (generate-jitconfig)', r);
      const b = r.body as { runner: { id: number }; encoded_jit_config: string };
      return { runnerId: b.runner.id, encodedJitConfig: b.encoded_jit_config };
    },
    async listRunners(i, s, name) {
      const out: GhRunner[] = [];
      for (let page = 1; page <= 50; page++) {
        const q = new URLSearchParams({ per_page: '100', page: String(page), ...(name ? { name } : {}) });
        const r = await inst(i, 'GET', `${base(s)}/actions/runners?${q}`);
        if (r.status !== 200) fail('listing runners', r);
        const b = r.body as { runners: Parameters<typeof runnerOf>[0][] };
        out.push(...b.runners.map(runnerOf));
        if (b.runners.length < 100) break;
      }
      return out;
    },
    async getRunner(i, s, runnerId) {
      const r = await inst(i, 'GET', `${base(s)}/actions/runners/${runnerId}`);
      if (r.status === 404) return null;
      if (r.status !== 200) fail(`reading runner ${runnerId}`, r);
      return runnerOf(r.body as Parameters<typeof runnerOf>[0]);
    },
    async deleteRunner(i, s, runnerId) {
      const r = await inst(i, 'DELETE', `${base(s)}/actions/runners/${runnerId}`);
      if (r.status === 204) return 'deleted';
      if (r.status === 404) return 'gone';
      if (r.status === 422) throw new KilnError('github.runner_busy', `runner ${runnerId} is busy and cannot be removed now`, { kind: 'unavailable' });
      return fail(`removing runner ${runnerId}`, r);
    },
    async listFailedDeliveries(sinceMs) {
      const out: GhDelivery[] = [];
      let cursor: string | undefined;
      for (let page = 0; page < 20; page++) {
        const q = new URLSearchParams({ per_page: '100', status: 'failure', ...(cursor ? { cursor } : {}) });
        const r = await call('GET', `/app/hook/deliveries?${q}`, `Bearer ${appJwt()}`);
        if (r.status !== 200) fail('listing webhook deliveries', r);
        const items = r.body as { id: number; guid: string; event: string; action: string | null; status_code: number; redelivery: boolean; delivered_at: string }[];
        let old = false;
        for (const d of items) {
          if (Date.parse(d.delivered_at) < sinceMs) {
            old = true;
            continue;
          }
          out.push({ id: d.id, guid: d.guid, event: d.event, action: d.action, statusCode: d.status_code, redelivery: d.redelivery, deliveredAt: d.delivered_at });
        }
        const next = /<([^>]+)>;\s*rel="next"/.exec(r.link ?? '')?.[1];
        cursor = next ? (new URL(next).searchParams.get('cursor') ?? undefined) : undefined;
        if (old || !cursor) break;
      }
      return out;
    },
    async redeliver(deliveryId) {
      const r = await call('POST', `/app/hook/deliveries/${deliveryId}/attempts`, `Bearer ${appJwt()}`);
      if (r.status !== 202) fail(`redelivering ${deliveryId}`, r);
    },
  };
}
