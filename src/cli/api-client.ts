/**
 * HTTP client for the kiln API, used by the CLI commands and by `kiln run` (through submitAndFollow).
 * Calls are typed by the HTTP contract (core/http-contract.ts): a call names a route of `API` and passes
 * its parameters, query and body; the answer is checked against the route's answer schema. Errors come back
 * as KilnErrors carrying the server's code, message and hint.
 */
import { randomUUID } from 'node:crypto';
import type { Static } from '@sinclair/typebox';
import { TypeCompiler } from '@sinclair/typebox/compiler';
import { KilnError } from '../core/errors.ts';
import { API, decodeAnswer, ErrorAnswer, LogLine, routePath, type JobOut, type JobSubmit, type AnsweringRoute, type RouteInput } from '../core/http-contract.ts';
import type { Job, LogStream } from '../core/job.ts';

export interface ApiClient {
  readonly server: string;
  /** Calls one route of the contract; resolves with its answer, checked against the route's answer schema. */
  call<R extends AnsweringRoute>(route: R, input: RouteInput<R>, extraHeaders?: Record<string, string>): Promise<Static<R['schema']['response']>>;
  /** A request outside the contract (tests send bad input on purpose); the answer is not checked: `unknown`. */
  send(method: string, path: string, body?: unknown, extraHeaders?: Record<string, string>): Promise<unknown>;
  /** Streams a job's log; resolves with the job's end state once it is final (follow) or at the end of what is stored. */
  logs(jobId: number, opts: { follow: boolean; after?: number; onChunk(stream: LogStream, data: Buffer, attempt: number): void | Promise<void>; signal?: AbortSignal }): Promise<LogEnd>;
}

export interface LogEnd {
  state: Job['state'];
  exitCode: number | null;
  error: { code: string; message: string } | null;
  logTruncated: boolean;
}

/**
 * Submits one job with an `Idempotency-Key` (a fresh UUID) and retries on connection errors with the same
 * key: a request cut before its answer (a server restart, a replica killed) may or may not have been
 * stored, and the retry gets the job it stored, or stores it once (the server remembers a key for 24 h).
 */
export async function submitJob(client: ApiClient, body: JobSubmit, o: { tries?: number; backoffMs?: number; key?: string } = {}): Promise<JobOut> {
  const key = o.key ?? randomUUID();
  const tries = o.tries ?? 6;
  for (let i = 1; ; i++) {
    try {
      return await client.call(API.submitJob, { body }, { 'idempotency-key': key });
    } catch (e) {
      if (!(e instanceof KilnError) || e.code !== 'client.unreachable' || i >= tries) throw e;
      await new Promise((r) => setTimeout(r, (o.backoffMs ?? 250) * 2 ** (i - 1)));
    }
  }
}

const ErrorCheck = TypeCompiler.Compile(ErrorAnswer);

export function makeApiClient(opts: { server: string; token: string | undefined; ca?: Buffer }): ApiClient {
  const base = opts.server.replace(/\/$/, '');
  // A private CA (--ca, KILN_CA): undici's fetch with an agent that trusts it besides the system roots,
  // loaded only when asked for (it costs start-up time).
  let caFetch: Promise<typeof fetch> | undefined;
  const doFetch = (url: string, init: RequestInit): Promise<Response> => {
    if (!opts.ca) return fetch(url, init);
    const ca = opts.ca;
    caFetch ??= Promise.all([import('undici'), import('node:tls')]).then(([u, tls]) => {
      const dispatcher = new u.Agent({ connect: { ca: [...tls.rootCertificates, ca] } });
      return ((url: string, init: RequestInit) => u.fetch(url, { ...(init as object), dispatcher } as never)) as unknown as typeof fetch;
    });
    return caFetch.then((f) => f(url, init));
  };
  const headers = (json: boolean): Record<string, string> => ({
    ...(opts.token ? { authorization: `Bearer ${opts.token}` } : {}),
    ...(json ? { 'content-type': 'application/json' } : {}),
  });
  const fail = async (res: Response): Promise<never> => {
    let e: ErrorAnswer['error'] | undefined;
    try {
      const body: unknown = await res.json();
      if (ErrorCheck.Check(body)) e = body.error;
    } catch {
      /* not JSON */
    }
    throw new KilnError(e?.code ?? `http.${res.status}`, e?.message ?? `the server answered ${res.status}`, {
      ...(e?.hint ? { hint: e.hint } : res.status === 401 ? { hint: 'set KILN_TOKEN (or pass --token) to a token from `kiln tokens create`' } : {}),
      details: { status: res.status },
    });
  };
  const reach = async (path: string, init: RequestInit): Promise<Response> => {
    try {
      return await doFetch(`${base}${path}`, init);
    } catch (e) {
      throw new KilnError('client.unreachable', `cannot reach the kiln server at ${base}`, {
        cause: e,
        kind: 'unavailable',
        hint: 'check KILN_SERVER / --server, and that `kiln server` or `kiln up` is running',
      });
    }
  };
  const send = async (method: string, path: string, body?: unknown, extraHeaders?: Record<string, string>): Promise<unknown> => {
    const res = await reach(path, { method, headers: { ...headers(body !== undefined), ...extraHeaders }, ...(body !== undefined ? { body: JSON.stringify(body) } : {}) });
    if (!res.ok) return fail(res);
    const answer: unknown = await res.json();
    return answer;
  };
  return {
    server: base,
    send,
    async call<R extends AnsweringRoute>(route: R, input: RouteInput<R>, extraHeaders?: Record<string, string>): Promise<Static<R['schema']['response']>> {
      const path = routePath(route.url, input.params, input.query);
      return decodeAnswer(`${route.method} ${route.url}`, route.schema.response, await send(route.method, path, input.body, extraHeaders));
    },
    async logs(jobId, o) {
      const q = new URLSearchParams({ follow: String(o.follow), ...(o.after ? { after: String(o.after) } : {}) });
      let after = o.after ?? 0;
      // A follow survives a dropped connection (server restart, another replica): resume from the cursor.
      for (let tries = 0; ; tries++) {
        q.set('after', String(after));
        const res = await reach(`/v1/jobs/${jobId}/logs?${q}`, { headers: headers(false), ...(o.signal ? { signal: o.signal } : {}) }).catch((e: unknown) => {
          if (tries < 30 && o.follow && !o.signal?.aborted) return undefined;
          throw e;
        });
        if (res && !res.ok) return fail(res);
        if (res?.body) {
          let rest = '';
          const decoder = new TextDecoder();
          try {
            for await (const part of res.body) {
              rest += decoder.decode(part, { stream: true });
              let nl: number;
              while ((nl = rest.indexOf('\n')) >= 0) {
                const line = rest.slice(0, nl);
                rest = rest.slice(nl + 1);
                if (!line) continue;
                const m = decodeAnswer(`the log of job ${jobId}`, LogLine, JSON.parse(line));
                if (m.end === true) return { state: m.state, exitCode: m.exitCode, error: m.error, logTruncated: m.logTruncated };
                await o.onChunk(m.stream, Buffer.from(m.data, 'base64'), m.attempt);
                after = m.id;
              }
            }
          } catch (e) {
            if (o.signal?.aborted) throw e;
          }
        }
        if (!o.follow || tries >= 30) throw new KilnError('client.log_stream_ended', `the log stream of job ${jobId} ended early`, { kind: 'unavailable' });
        await new Promise((r) => setTimeout(r, Math.min(2000, 100 * 2 ** tries)));
      }
    },
  };
}
