/**
 * A client for the OCI distribution API: manifests and blobs, token and basic auth, digest verification of
 * everything fetched, cross-repository mounts, chunked uploads, retries with backoff on 429/5xx and network
 * failures. One instance per command; close() releases its connections.
 *
 * Transport is node:http/https with keep-alive agents (one per origin): already part of Node, so a CLI step
 * that runs in a few hundred milliseconds pays no start-up cost for an HTTP library.
 */
import { createHash } from 'node:crypto';
import { Agent as HttpAgent, request as httpRequest, type IncomingMessage, type OutgoingHttpHeaders } from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import { Readable } from 'node:stream';
import { KilnError } from '../core/errors.ts';
import { challengeScopes, mergeScopes, parseChallenges, repositoryScope, type Credential, type CredentialSource } from './auth.ts';
import { isDigest, sha256Digest } from './digest.ts';
import type { FetchedManifest } from './compose.ts';
import { MANIFEST_ACCEPT } from './media-types.ts';
import { apiHost } from './reference.ts';
import {
  DEFAULT_RETRY,
  RETRYABLE_STATUS,
  assertUrlAllowed,
  backoffMs,
  mayCarryCredentials,
  networkErrorCode,
  schemeFor,
  tlsErrorCode,
  type HostConfigs,
  type RetryPolicy,
} from './transport-policy.ts';

export interface RegistryClientOptions {
  credentials: CredentialSource;
  hosts?: HostConfigs;
  retry?: RetryPolicy;
  /** Blobs larger than this are uploaded in PATCH chunks of this size; smaller ones in one PUT. */
  chunkSize?: number;
  sleep?: (ms: number) => Promise<void>;
  /** Called before each retry (the CLI shows it as progress). */
  onRetry?: (info: { method: string; url: string; attempt: number; delayMs: number; reason: string }) => void;
  userAgent?: string;
  /** Socket inactivity limit per request (default 120 s); a timeout counts as a retryable network error. */
  timeoutMs?: number;
}

export const DEFAULT_CHUNK_SIZE = 16 * 1024 * 1024;
const MAX_JSON_BYTES = 8 * 1024 * 1024;

interface AuthState {
  scheme: 'none' | 'basic' | 'bearer';
  realm?: string;
  service?: string;
}

interface SendOptions {
  method: 'GET' | 'HEAD' | 'PUT' | 'POST' | 'PATCH' | 'DELETE';
  /** A path under the registry (`/v2/...`) or an absolute URL (upload Locations). */
  path: string;
  headers?: Record<string, string>;
  body?: Uint8Array | Readable;
  scopes: string[];
  /** Statuses the caller handles itself (everything else 4xx/5xx becomes a KilnError). */
  ok: number[];
}

/** A response body: consumed as a Node stream, or drained so the connection is reused. */
export class ResponseBody {
  constructor(private readonly msg: IncomingMessage | undefined) {}

  node(): Readable {
    return this.msg ?? Readable.from([]);
  }

  async dump(): Promise<void> {
    const m = this.msg;
    // Always read to the end (even a HEAD's empty body): only then does the socket go back to the pool.
    if (!m || m.readableEnded || m.destroyed) return;
    await new Promise<void>((resolve) => {
      m.once('end', resolve);
      m.once('close', resolve);
      m.once('error', () => resolve());
      m.resume();
    });
  }
}

export interface Response {
  status: number;
  headers: Record<string, string | undefined>;
  body: ResponseBody;
  url: URL;
}

export interface RegistryErrorDetail {
  code: string;
  message?: string;
}

function header(res: { headers: Record<string, string | undefined> }, name: string): string | undefined {
  return res.headers[name];
}

async function readCapped(body: ResponseBody | Readable, max: number, what: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let n = 0;
  const stream = body instanceof Readable ? body : body.node();
  for await (const c of stream as AsyncIterable<Buffer>) {
    n += c.length;
    if (n > max) {
      stream.destroy();
      throw new KilnError('oci.response_too_large', `${what} is larger than ${max} bytes`, { hint: 'check that the reference names a manifest, not a layer' });
    }
    chunks.push(c);
  }
  return Buffer.concat(chunks);
}

/** Maps a distribution error response to a KilnError code (a table, not message matching). */
export function kilnCodeFor(status: number, registryCode: string | undefined): string {
  if (registryCode === 'MANIFEST_BLOB_UNKNOWN') return 'oci.manifest_blob_unknown';
  if (registryCode === 'MANIFEST_INVALID') return 'oci.manifest_invalid';
  if (registryCode === 'DIGEST_INVALID') return 'oci.digest_invalid';
  if (registryCode === 'UNSUPPORTED' || status === 405) return 'oci.push_refused';
  if (registryCode === 'DENIED' || status === 403) return 'oci.denied';
  if (status === 401) return 'oci.unauthorized';
  if (status === 404) return 'oci.not_found';
  if (status === 413) return 'oci.index_too_large';
  if (status === 429) return 'oci.rate_limited';
  if (status >= 500) return 'oci.registry_unavailable';
  return 'oci.registry_error';
}

const HINTS: Record<string, string> = {
  'oci.unauthorized': 'log in first (docker login HOST writes ~/.docker/config.json, which kiln reads), or set KILN_REGISTRY_USERNAME and KILN_REGISTRY_PASSWORD',
  'oci.denied': 'the credentials lack a permission: push on the target, pull on every source repository',
  'oci.push_refused': 'the registry refuses writes (a pull-through mirror answers 405): push to the real registry instead',
  'oci.not_found': 'check the reference: push the image first and use the digest the push printed',
  'oci.rate_limited': 'the registry is rate-limiting; wait, log in for a higher limit, or pull through a mirror',
  'oci.registry_unavailable': 'the registry failed repeatedly; check its health and retry',
  'oci.manifest_blob_unknown': 'a child or blob is missing from the target repository; re-run, and report the registry if it persists',
};

function decodeRegistryErrors(text: string): RegistryErrorDetail[] {
  try {
    const j = JSON.parse(text) as { errors?: { code?: unknown; message?: unknown }[] };
    return (j.errors ?? []).map((e) => ({ code: String(e.code ?? ''), ...(typeof e.message === 'string' ? { message: e.message } : {}) }));
  } catch {
    return [];
  }
}

export class RegistryClient {
  private readonly opts: RegistryClientOptions;
  private readonly hosts: HostConfigs;
  private readonly retry: RetryPolicy;
  private readonly sleep: (ms: number) => Promise<void>;
  private readonly auth = new Map<string, AuthState>();
  private readonly tokens = new Map<string, { token: string; expires: number }>();
  private readonly agents = new Map<string, HttpAgent>();
  readonly chunkSize: number;
  /** Counters for progress output, tests and the benchmark. */
  readonly stats = { requests: 0, chunksUploaded: 0 };

  constructor(opts: RegistryClientOptions) {
    this.opts = opts;
    this.hosts = opts.hosts ?? {};
    this.retry = opts.retry ?? DEFAULT_RETRY;
    this.sleep = opts.sleep ?? ((ms) => new Promise((r) => setTimeout(r, ms)));
    this.chunkSize = opts.chunkSize ?? DEFAULT_CHUNK_SIZE;
  }

  private closed = false;

  /** Ends every kept-alive connection; requests after this fail instead of opening new ones. */
  async close(): Promise<void> {
    this.closed = true;
    for (const a of this.agents.values()) a.destroy();
    this.agents.clear();
  }

  baseUrl(registry: string): string {
    return `${schemeFor(registry, this.hosts)}://${apiHost(registry)}`;
  }

  /** A keep-alive agent per origin; HTTPS ones carry the host's CA and verification settings. */
  private agentFor(url: URL): HttpAgent {
    if (this.closed) throw new KilnError('internal.client_closed', 'the registry client was used after close()', { kind: 'internal' });
    const key = `${url.protocol}//${url.host}`;
    let a = this.agents.get(key);
    if (!a) {
      const c = this.hosts[url.host];
      a =
        url.protocol === 'https:'
          ? new HttpsAgent({ keepAlive: true, maxSockets: 16, ...(c?.ca ? { ca: c.ca } : {}), ...(c?.insecureSkipVerify ? { rejectUnauthorized: false } : {}) })
          : new HttpAgent({ keepAlive: true, maxSockets: 16 });
      this.agents.set(key, a);
    }
    return a;
  }

  private exchange(method: string, url: URL, headers: Record<string, string>, body: Uint8Array | Readable | undefined): Promise<IncomingMessage> {
    return new Promise((resolve, reject) => {
      const h: OutgoingHttpHeaders = { ...headers };
      if (body instanceof Uint8Array) h['content-length'] = String(body.byteLength);
      const req = (url.protocol === 'https:' ? httpsRequest : httpRequest)(url, { method, headers: h, agent: this.agentFor(url) }, resolve);
      req.on('error', reject);
      req.setTimeout(this.opts.timeoutMs ?? 120_000, () => req.destroy(Object.assign(new Error(`no answer from ${url.host} in time`), { code: 'ETIMEDOUT' })));
      if (body instanceof Readable) {
        body.on('error', (e) => req.destroy(e));
        body.pipe(req);
      } else req.end(body === undefined || body.byteLength === 0 ? undefined : body);
    });
  }

  // ---- auth ----

  private async credentialFor(registry: string, url: URL): Promise<Credential | undefined> {
    const c = await this.opts.credentials.get(registry);
    if (c && !mayCarryCredentials(url)) {
      throw new KilnError('oci.plain_http_refused', `refusing to send credentials for ${registry} over plain HTTP to ${url.host}`, {
        hint: 'serve the registry (and its token realm) over HTTPS, or remove the credentials for it',
      });
    }
    return c;
  }

  private async authorization(registry: string, scopes: string[], force: boolean): Promise<string | undefined> {
    const state = this.auth.get(registry);
    if (!state || state.scheme === 'none') return undefined;
    if (state.scheme === 'basic') {
      const c = await this.credentialFor(registry, new URL(this.baseUrl(registry)));
      if (!c || !('username' in c)) return undefined;
      return `Basic ${Buffer.from(`${c.username}:${c.password}`).toString('base64')}`;
    }
    const merged = mergeScopes(scopes);
    const key = `${registry} ${merged.join(' ')}`;
    const cached = this.tokens.get(key);
    if (!force && cached && cached.expires > Date.now()) return `Bearer ${cached.token}`;
    const token = await this.fetchToken(registry, state, merged);
    this.tokens.set(key, token);
    return `Bearer ${token.token}`;
  }

  private async fetchToken(registry: string, state: AuthState, scopes: string[]): Promise<{ token: string; expires: number }> {
    if (!state.realm) throw new KilnError('oci.auth_challenge_invalid', `${registry} asked for a bearer token without naming a realm`, { hint: 'report this to the registry operator' });
    const url = new URL(state.realm);
    assertUrlAllowed(url, this.hosts);
    const cred = await this.credentialFor(registry, url);
    let method: 'GET' | 'POST' = 'GET';
    let body: string | undefined;
    const headers: Record<string, string> = { 'user-agent': this.opts.userAgent ?? 'kiln' };
    if (cred && 'identityToken' in cred) {
      method = 'POST';
      const form = new URLSearchParams({ grant_type: 'refresh_token', refresh_token: cred.identityToken, client_id: 'kiln' });
      if (state.service) form.set('service', state.service);
      if (scopes.length > 0) form.set('scope', scopes.join(' '));
      body = form.toString();
      headers['content-type'] = 'application/x-www-form-urlencoded';
    } else {
      if (state.service) url.searchParams.set('service', state.service);
      for (const s of scopes) url.searchParams.append('scope', s);
      if (cred) headers.authorization = `Basic ${Buffer.from(`${cred.username}:${cred.password}`).toString('base64')}`;
    }
    const res = await this.raw(method, url, headers, body === undefined ? undefined : Buffer.from(body), true);
    const text = (await readCapped(res.body, 1024 * 1024, 'token response')).toString('utf8');
    if (res.status !== 200) {
      const code = res.status === 401 || res.status === 403 ? 'oci.unauthorized' : 'oci.auth_failed';
      throw new KilnError(code, `the token service for ${registry} (${url.origin}${url.pathname}) answered ${res.status} for ${scopes.join(' ') || 'no scope'}`, {
        hint: cred ? 'the stored credentials were refused: run docker login again, or check KILN_REGISTRY_USERNAME/PASSWORD' : (HINTS['oci.unauthorized'] as string),
        details: { status: res.status, scopes },
      });
    }
    let j: { token?: string; access_token?: string; expires_in?: number };
    try {
      j = JSON.parse(text) as typeof j;
    } catch (e) {
      throw new KilnError('oci.auth_failed', `the token service for ${registry} answered something that is not JSON`, { cause: e });
    }
    const token = j.token ?? j.access_token;
    if (!token) throw new KilnError('oci.auth_failed', `the token service for ${registry} answered without a token`, { hint: 'report this to the registry operator' });
    const ttl = typeof j.expires_in === 'number' && j.expires_in > 0 ? j.expires_in : 60;
    return { token, expires: Date.now() + Math.max(ttl - 10, 5) * 1000 };
  }

  private learnChallenge(registry: string, res: Response): string[] {
    const h = res.headers['www-authenticate'];
    const all = (Array.isArray(h) ? h : h ? [h] : []).flatMap(parseChallenges);
    const bearer = all.find((c) => c.scheme === 'bearer');
    if (bearer) {
      const st: AuthState = { scheme: 'bearer' };
      if (bearer.params.realm) st.realm = bearer.params.realm;
      if (bearer.params.service) st.service = bearer.params.service;
      this.auth.set(registry, st);
      return challengeScopes(bearer);
    }
    if (all.some((c) => c.scheme === 'basic')) this.auth.set(registry, { scheme: 'basic' });
    return [];
  }

  // ---- transport ----

  /** One HTTP exchange with retries on 429/5xx and network failures (only for replayable bodies). */
  private async raw(method: string, url: URL, headers: Record<string, string>, body: Uint8Array | Readable | undefined, replayable: boolean): Promise<Response> {
    assertUrlAllowed(url, this.hosts);
    const attempts = replayable ? this.retry.attempts : 1;
    for (let attempt = 1; ; attempt++) {
      let reason: string;
      let retryAfter: string | undefined;
      try {
        this.stats.requests++;
        const res = await this.exchange(method, url, headers, body);
        const hdrs: Record<string, string | undefined> = {};
        for (const [k, v] of Object.entries(res.headers)) hdrs[k] = Array.isArray(v) ? v.join(', ') : v;
        const r: Response = { status: res.statusCode ?? 0, headers: hdrs, body: new ResponseBody(res), url };
        if (!RETRYABLE_STATUS.has(r.status) || attempt >= attempts) return r;
        retryAfter = header(r, 'retry-after');
        reason = `HTTP ${r.status}`;
        await r.body.dump();
      } catch (e) {
        const tls = tlsErrorCode(e);
        if (tls) {
          throw new KilnError('oci.tls_untrusted', `${url.host} presented a certificate kiln does not trust (${tls})`, {
            hint: `give the registry's CA for ${url.host} (registry: ${url.host}: {ca: /path/ca.pem} in the --file), or install it in the system trust store`,
            cause: e,
          });
        }
        const code = networkErrorCode(e);
        if (!code) throw e;
        if (attempt >= attempts) {
          throw new KilnError('oci.registry_unreachable', `cannot reach ${url.host} (${code}) for ${method} ${url.pathname}`, {
            hint: `check that the registry at ${url.origin} is up and reachable from here`,
            kind: 'unavailable',
            cause: e,
          });
        }
        reason = code;
      }
      const delayMs = backoffMs(attempt, this.retry, retryAfter);
      this.opts.onRetry?.({ method, url: url.href, attempt, delayMs, reason });
      await this.sleep(delayMs);
    }
  }

  /** A request to `registry` with auth (answering 401 challenges once) and error translation. */
  async send(registry: string, o: SendOptions): Promise<Response> {
    const url = o.path.startsWith('/') ? new URL(this.baseUrl(registry) + o.path) : new URL(o.path);
    const replayable = !(o.body instanceof Readable);
    let scopes = o.scopes;
    let force = false;
    for (let round = 0; ; round++) {
      const headers: Record<string, string> = { 'user-agent': this.opts.userAgent ?? 'kiln', ...(o.headers ?? {}) };
      const authz = await this.authorization(registry, scopes, force);
      if (authz) headers.authorization = authz;
      const res = await this.raw(o.method, url, headers, o.body, replayable);
      if (res.status === 401 && round === 0 && replayable) {
        const asked = this.learnChallenge(registry, res);
        await res.body.dump();
        scopes = mergeScopes([...scopes, ...asked]);
        force = true;
        continue;
      }
      if (o.ok.includes(res.status)) return res;
      const text = o.method === 'HEAD' ? '' : (await readCapped(res.body, 64 * 1024, 'error response').catch(() => Buffer.alloc(0))).toString('utf8');
      const errors = decodeRegistryErrors(text);
      const first = errors[0];
      const code = kilnCodeFor(res.status, first?.code);
      const what = errors.map((e) => `${e.code}${e.message ? ` ${e.message}` : ''}`).join('; ') || text.slice(0, 200).trim();
      throw new KilnError(code, `${o.method} ${url.host}${url.pathname} answered ${res.status}${what ? `: ${what}` : ''}`, {
        ...(HINTS[code] ? { hint: HINTS[code] } : {}),
        kind: res.status >= 500 || res.status === 429 ? 'unavailable' : 'user',
        details: { status: res.status, registryCode: first?.code, scopes },
      });
    }
  }

  // ---- manifests ----

  /** GETs a manifest or index, keeps its raw bytes and verifies its digest. */
  async getManifest(registry: string, repository: string, reference: string, accept = MANIFEST_ACCEPT): Promise<FetchedManifest> {
    const res = await this.send(registry, {
      method: 'GET',
      path: `/v2/${repository}/manifests/${reference}`,
      headers: { accept },
      scopes: [repositoryScope(repository, 'pull')],
      ok: [200],
    });
    const bytes = await readCapped(res.body, MAX_JSON_BYTES, `manifest ${repository}:${reference}`);
    const digest = sha256Digest(bytes);
    const claimed = header(res, 'docker-content-digest');
    if (isDigest(reference) && digest !== reference) {
      throw new KilnError('oci.digest_mismatch', `${registry}/${repository}@${reference}: the registry returned bytes that hash to ${digest}`, {
        hint: 'something between kiln and the registry rewrote the manifest; fetch it directly',
        kind: 'unavailable',
      });
    }
    if (claimed && claimed !== digest && claimed.startsWith('sha256:')) {
      throw new KilnError('oci.digest_mismatch', `${registry}/${repository}:${reference}: Docker-Content-Digest says ${claimed} but the bytes hash to ${digest}`, {
        hint: 'something between kiln and the registry rewrote the manifest; fetch it directly',
        kind: 'unavailable',
      });
    }
    let json: Record<string, unknown>;
    try {
      json = JSON.parse(bytes.toString('utf8')) as Record<string, unknown>;
    } catch (e) {
      throw new KilnError('oci.manifest_invalid', `${registry}/${repository}:${reference} is not JSON`, { cause: e, hint: 'check the reference' });
    }
    const contentType = (header(res, 'content-type') ?? '').split(';')[0]?.trim() ?? '';
    const mediaType = typeof json.mediaType === 'string' ? json.mediaType : contentType;
    return { digest, mediaType, bytes: new Uint8Array(bytes), json };
  }

  /** HEADs a manifest; undefined when it is not there. */
  async headManifest(registry: string, repository: string, reference: string, scopes?: string[]): Promise<{ digest?: string; mediaType?: string } | undefined> {
    const res = await this.send(registry, {
      method: 'HEAD',
      path: `/v2/${repository}/manifests/${reference}`,
      headers: { accept: MANIFEST_ACCEPT },
      scopes: scopes ?? [repositoryScope(repository, 'pull')],
      ok: [200, 404],
    });
    await res.body.dump();
    if (res.status === 404) return undefined;
    const out: { digest?: string; mediaType?: string } = {};
    const d = header(res, 'docker-content-digest');
    const t = header(res, 'content-type');
    if (d) out.digest = d;
    if (t) out.mediaType = t;
    return out;
  }

  /** PUTs manifest bytes exactly as given; checks the registry computed the same digest. */
  async putManifest(registry: string, repository: string, reference: string, bytes: Uint8Array, mediaType: string): Promise<{ digest: string; subject?: string }> {
    const expected = sha256Digest(bytes);
    const res = await this.send(registry, {
      method: 'PUT',
      path: `/v2/${repository}/manifests/${reference}`,
      headers: { 'content-type': mediaType },
      body: bytes,
      scopes: [repositoryScope(repository, 'pull,push')],
      ok: [200, 201],
    });
    await res.body.dump();
    const got = header(res, 'docker-content-digest');
    if (got && got !== expected) {
      throw new KilnError('oci.digest_mismatch', `${registry}/${repository}:${reference}: the registry stored ${got}, kiln sent ${expected}`, {
        hint: 'the registry rewrote the manifest; it cannot hold this index unchanged',
      });
    }
    const subject = header(res, 'oci-subject');
    return { digest: expected, ...(subject ? { subject } : {}) };
  }

  // ---- blobs ----

  async hasBlob(registry: string, repository: string, digest: string, scopes?: string[]): Promise<boolean> {
    const res = await this.send(registry, {
      method: 'HEAD',
      path: `/v2/${repository}/blobs/${digest}`,
      scopes: scopes ?? [repositoryScope(repository, 'pull')],
      ok: [200, 404],
    });
    await res.body.dump();
    return res.status === 200;
  }

  /** Opens a blob for streaming, following redirects (without credentials to other hosts). */
  async openBlob(registry: string, repository: string, digest: string): Promise<{ body: Readable; size: number | undefined }> {
    let res = await this.send(registry, {
      method: 'GET',
      path: `/v2/${repository}/blobs/${digest}`,
      scopes: [repositoryScope(repository, 'pull')],
      ok: [200, 301, 302, 303, 307, 308],
    });
    for (let hops = 0; res.status !== 200; hops++) {
      const loc = header(res, 'location');
      await res.body.dump();
      if (!loc || hops >= 5) throw new KilnError('oci.registry_error', `${registry}: blob ${digest} redirected too often or nowhere`, { hint: 'report this to the registry operator' });
      const next = new URL(loc, res.url);
      if (next.host === res.url.host) {
        res = await this.send(registry, { method: 'GET', path: next.href, scopes: [repositoryScope(repository, 'pull')], ok: [200, 301, 302, 303, 307, 308] });
      } else {
        res = await this.raw('GET', next, { 'user-agent': this.opts.userAgent ?? 'kiln' }, undefined, true);
        if (![200, 301, 302, 303, 307, 308].includes(res.status)) {
          await res.body.dump();
          throw new KilnError('oci.registry_error', `${registry}: blob ${digest} storage at ${next.host} answered ${res.status}`, { hint: 'retry; report it if it persists' });
        }
      }
    }
    const len = header(res, 'content-length');
    return { body: res.body.node(), size: len ? Number(len) : undefined };
  }

  /** Fetches a small blob (an image config) whole, verifying its digest. */
  async getBlobBytes(registry: string, repository: string, digest: string, max = MAX_JSON_BYTES): Promise<Uint8Array> {
    const { body } = await this.openBlob(registry, repository, digest);
    const bytes = await readCapped(body, max, `blob ${digest}`);
    if (sha256Digest(bytes) !== digest) {
      throw new KilnError('oci.digest_mismatch', `${registry}/${repository}: blob ${digest} hashes to ${sha256Digest(bytes)}`, {
        hint: 'the registry returned corrupt content; retry, and report it if it persists',
        kind: 'unavailable',
      });
    }
    return new Uint8Array(bytes);
  }

  /**
   * Tries a cross-repository mount. 201: mounted. 202: the registry started an upload instead (its Location
   * is returned so the caller streams the blob there). The token asks for pull on the source repository.
   */
  async mountBlob(registry: string, repository: string, digest: string, fromRepository: string): Promise<{ mounted: true } | { mounted: false; location: string }> {
    const res = await this.send(registry, {
      method: 'POST',
      path: `/v2/${repository}/blobs/uploads/?mount=${encodeURIComponent(digest)}&from=${encodeURIComponent(fromRepository)}`,
      headers: { 'content-length': '0' },
      body: new Uint8Array(0),
      scopes: [repositoryScope(repository, 'pull,push'), repositoryScope(fromRepository, 'pull')],
      ok: [201, 202],
    });
    await res.body.dump();
    if (res.status === 201) return { mounted: true };
    return { mounted: false, location: this.location(res) };
  }

  async startUpload(registry: string, repository: string): Promise<string> {
    const res = await this.send(registry, {
      method: 'POST',
      path: `/v2/${repository}/blobs/uploads/`,
      headers: { 'content-length': '0' },
      body: new Uint8Array(0),
      scopes: [repositoryScope(repository, 'pull,push')],
      ok: [202],
    });
    await res.body.dump();
    return this.location(res);
  }

  private location(res: Response): string {
    const loc = header(res, 'location');
    if (!loc) throw new KilnError('oci.registry_error', `${res.url.host} started an upload without a Location`, { hint: 'report this to the registry operator' });
    return new URL(loc, res.url).href;
  }

  /**
   * Uploads a blob to an upload session: one PUT when it fits in a chunk, else PATCH chunks with
   * Content-Range and a final PUT with the digest. The stream is hashed on the way and must match `digest`.
   */
  async uploadBlob(registry: string, repository: string, digest: string, location: string, content: Uint8Array | Readable): Promise<void> {
    const scopes = [repositoryScope(repository, 'pull,push')];
    const withDigest = (loc: string) => {
      const u = new URL(loc);
      u.searchParams.set('digest', digest);
      return u.href;
    };
    if (!(content instanceof Readable)) {
      if (sha256Digest(content) !== digest) throw new KilnError('oci.digest_mismatch', `blob content does not hash to ${digest}`, { kind: 'internal' });
      const res = await this.send(registry, {
        method: 'PUT',
        path: withDigest(location),
        headers: { 'content-type': 'application/octet-stream', 'content-length': String(content.byteLength) },
        body: content,
        scopes,
        ok: [201],
      });
      await res.body.dump();
      return;
    }
    const hash = createHash('sha256');
    let loc = location;
    let offset = 0;
    let pending: Buffer[] = [];
    let pendingBytes = 0;
    const flush = async (chunk: Buffer) => {
      const res = await this.send(registry, {
        method: 'PATCH',
        path: loc,
        headers: {
          'content-type': 'application/octet-stream',
          'content-length': String(chunk.length),
          'content-range': `${offset}-${offset + chunk.length - 1}`,
        },
        body: chunk,
        scopes,
        ok: [202],
      });
      await res.body.dump();
      loc = this.location(res);
      offset += chunk.length;
      this.stats.chunksUploaded++;
    };
    let chunked = false;
    for await (const c of content as AsyncIterable<Buffer>) {
      hash.update(c);
      pending.push(c);
      pendingBytes += c.length;
      while (pendingBytes >= this.chunkSize) {
        chunked = true;
        const all = Buffer.concat(pending);
        pending = [all.subarray(this.chunkSize)];
        pendingBytes = all.length - this.chunkSize;
        await flush(all.subarray(0, this.chunkSize));
      }
    }
    const actual = `sha256:${hash.digest('hex')}`;
    if (actual !== digest) {
      throw new KilnError('oci.digest_mismatch', `${registry}: the source blob streamed for ${digest} hashes to ${actual}`, {
        hint: 'the source registry returned corrupt content; retry, and report it if it persists',
        kind: 'unavailable',
      });
    }
    const last = Buffer.concat(pending);
    const res = await this.send(registry, {
      method: 'PUT',
      path: withDigest(loc),
      headers: { 'content-type': 'application/octet-stream', 'content-length': String(last.length), ...(chunked && last.length > 0 ? { 'content-range': `${offset}-${offset + last.length - 1}` } : {}) },
      body: last,
      scopes,
      ok: [201],
    });
    await res.body.dump();
  }

  /**
   * Checks that the repository accepts pushes before any work: opens an upload session and cancels it. A
   * pull-through mirror answers 405, missing push rights 401/403, each with its own error.
   */
  async probePush(registry: string, repository: string): Promise<void> {
    const location = await this.startUpload(registry, repository);
    const res = await this.send(registry, { method: 'DELETE', path: location, scopes: [repositoryScope(repository, 'pull,push')], ok: [200, 202, 204, 404, 405] }).catch(() => undefined);
    await res?.body.dump();
  }

  /** GET /v2/: the version check and auth probe. */
  async ping(registry: string): Promise<void> {
    const res = await this.send(registry, { method: 'GET', path: '/v2/', scopes: [], ok: [200] });
    await res.body.dump();
  }
}
