// Issue 17: a seeded property fuzz of a real `kiln server` process: random and mutated requests against every
// API route of /openapi.json, validly signed mutated webhook deliveries, and agent-protocol messages over real
// WebSockets. Properties: no 5xx answer, no WebSocket closed with 1011 (server error), no error-level log
// line, the process never exits, and it still answers afterwards. The seed is printed; KILN_FUZZ_SEED=N
// replays a run, KILN_FUZZ_CASES=N changes its size.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import WebSocket from 'ws';
import { killAll } from '../agent/processes.ts';
import { githubEnv, signBody, startServerProcess } from './process-server.ts';
import { seededRandom } from '../../src/core/seeded-random.ts';
import { WEBHOOK_PATH } from '../../src/server/github/manifest.ts';
import { CACHE_TRANSFER_VERSION, PROTOCOL_VERSION } from '../../src/core/agent-protocol.ts';

after(killAll);

const seed = Number(process.env.KILN_FUZZ_SEED ?? Math.floor(Math.random() * 2 ** 31));
const CASES = Number(process.env.KILN_FUZZ_CASES ?? 3000);

type R = () => number;
const int = (r: R, n: number) => Math.floor(r() * n);
const pick = <T>(r: R, xs: readonly T[]): T => xs[int(r, xs.length)]!;

/** encodeURIComponent, with a lone surrogate sent as the bytes a careless client would send (WTF-8). */
const encode = (v: string): string => {
  try {
    return encodeURIComponent(v);
  } catch {
    return encodeURIComponent(v.replace(/[\ud800-\udfff]/g, '\u0001')).replace(/%01/g, '%ED%A0%80');
  }
};

/** Strings that have broken servers: NUL, lone surrogates, escapes, huge, numeric edge cases, path tricks. */
const NASTY_STRINGS = [
  '',
  ' ',
  '\u0000',
  'a\u0000b',
  '\ud800',
  'x\udfffy',
  '\u001b[2J',
  '%00',
  '%ff',
  '%',
  '../../etc/passwd',
  '9223372036854775808',
  '-1',
  '0',
  '1e308',
  'NaN',
  'Infinity',
  '__proto__',
  'constructor',
  'true',
  'null',
  '🔥',
  'é',
  'a'.repeat(5000),
  'kiln-arm64-8cpu-32gb',
  'kiln-amd64',
  '10s',
  '1G',
  'x=y',
  'A',
];
const NASTY_NUMBERS = [0, -1, 1, 2, 255, 256, 2 ** 31, 2 ** 53, 2 ** 63, -(2 ** 63), 1e308, 0.5, -0.0, 1e-9, 100, 1000, 10001];

function randomString(r: R): string {
  if (r() < 0.6) return pick(r, NASTY_STRINGS);
  const n = int(r, 40);
  let s = '';
  for (let i = 0; i < n; i++) s += String.fromCharCode(r() < 0.8 ? 32 + int(r, 95) : int(r, 0x10000));
  return s;
}

function randomValue(r: R, depth = 0): unknown {
  const k = int(r, depth > 3 ? 4 : 7);
  switch (k) {
    case 0:
      return randomString(r);
    case 1:
      return pick(r, NASTY_NUMBERS);
    case 2:
      return pick(r, [true, false, null]);
    case 3:
      return int(r, 20);
    case 4:
      return Array.from({ length: int(r, 4) }, () => randomValue(r, depth + 1));
    default: {
      const o: Record<string, unknown> = {};
      for (let i = int(r, 4); i > 0; i--) o[randomString(r)] = randomValue(r, depth + 1);
      return o;
    }
  }
}

/** A JSON-ish value mutated in one to three places: a key dropped, replaced, added; a type changed. */
function mutate(r: R, v: unknown, depth = 0): unknown {
  if (v === null || typeof v !== 'object' || depth > 4) return r() < 0.5 ? randomValue(r, 2) : v;
  if (Array.isArray(v)) {
    const a = [...(v as unknown[])];
    const op = int(r, 4);
    if (op === 0 && a.length) a.splice(int(r, a.length), 1);
    else if (op === 1) a.push(randomValue(r, 2));
    else if (a.length) a[int(r, a.length)] = mutate(r, a[int(r, a.length)], depth + 1);
    return a;
  }
  const o = { ...(v as Record<string, unknown>) };
  const keys = Object.keys(o);
  for (let n = 1 + int(r, 3); n > 0; n--) {
    const op = int(r, 4);
    const key = keys.length ? pick(r, keys) : 'x';
    if (op === 0) delete o[key];
    else if (op === 1) o[randomString(r)] = randomValue(r, 2);
    else o[key] = mutate(r, o[key], depth + 1);
  }
  return o;
}

const VALID_BODIES: Record<string, unknown> = {
  'POST /v1/jobs': { command: ['sh', '-c', 'true'], cpus: 1, memory: '1G', disk: '2G', env: { A: 'b' }, secretEnv: { S: 'secret-value' }, labels: ['kiln-amd64'], timeout: '10s', priority: 1, network: 'none' },
  'POST /v1/jobs/batch': { jobs: [{ command: ['true'] }, { command: ['true'], cpus: 2 }] },
  'POST /v1/tokens': { name: 'fuzz', role: 'read-only', tenant: 't1' },
  'PUT /v1/tenants/{name}': { maxConcurrent: 3 },
  'POST /v1/tenants/{name}': { maxConcurrent: 3 },
};

function workflowJob(r: R): Record<string, unknown> {
  return {
    action: pick(r, ['queued', 'in_progress', 'completed', 'waiting']),
    workflow_job: { id: 1 + int(r, 50), run_id: 1 + int(r, 10), run_attempt: 1, labels: ['self-hosted', 'kiln-amd64'], status: 'queued', name: 'build', workflow_name: 'ci', created_at: '2026-12-06T10:00:00Z', runner_name: null, head_branch: 'main' },
    repository: { id: 1, name: 'app', full_name: 'acme/app', private: true, owner: { login: 'acme', id: 2, type: 'Organization' } },
    installation: { id: 7 },
    sender: { login: 'dev', id: 3, type: 'User' },
    organization: { login: 'acme', id: 2 },
  };
}

test(`seeded fuzz of the API, the webhook and the agent protocol (seed ${seed})`, { timeout: 240_000 }, async () => {
  console.error(`fuzz seed: ${seed} (replay with KILN_FUZZ_SEED=${seed})`);
  const r = seededRandom(seed);
  const dir = mkdtempSync(join(tmpdir(), 'kiln-fuzz-'));
  const s = await startServerProcess('pglite', { ...githubEnv(dir), KILN_LOG_LEVEL: 'warn' });
  const failures: string[] = [];
  const statuses = new Map<number, number>();
  const t0 = Date.now();
  try {
    const openapi = (await (await fetch(`${s.url}/openapi.json`)).json()) as { paths: Record<string, Record<string, { parameters?: { name: string; in: string }[] }>> };
    const ops = Object.entries(openapi.paths)
      .flatMap(([path, methods]) => Object.entries(methods).map(([m, op]) => ({ method: m.toUpperCase(), path, params: op.parameters ?? [] })))
      .filter((o) => o.path !== '/v1/live' && o.path !== WEBHOOK_PATH);
    assert.ok(ops.length >= 25, `${ops.length} routes in /openapi.json`);
    const tokens = {
      admin: s.admin,
      operator: await s.token('fuzz-op', 'operator', 't1'),
      viewer: await s.token('fuzz-view', 'viewer', 't2'),
      agent: (await s.client.request<{ secret: string }>('POST', '/v1/tokens', { name: 'fuzz-agent', role: 'agent' })).secret,
    };
    const jobIds = (await s.client.request<{ ids: number[] }>('POST', '/v1/jobs/batch', { jobs: [{ command: ['true'] }, { command: ['true'], tenant: 't1' }] }).catch(() => ({ ids: [1, 2] }))).ids;

    const paramValue = (name: string): string => {
      const v = r() < 0.5 ? (name === 'id' ? String(pick(r, [...jobIds, 1, 2, 3, 99999])) : pick(r, ['fuzz-host', 't1', 't2', '1', 'default'])) : r() < 0.5 ? randomString(r) : String(pick(r, NASTY_NUMBERS));
      // raw percent-encoding junk now and then, else encoded
      return r() < 0.15 ? pick(r, ['%00', '%ff', '%', '%2e%2e', '%zz']) : encode(v);
    };
    const count = (st: number) => statuses.set(st, (statuses.get(st) ?? 0) + 1);

    async function apiCase(): Promise<void> {
      const op = pick(r, ops);
      let path = op.path.replace(/\{(\w+)\}/g, (_, n: string) => paramValue(n));
      const q = new URLSearchParams();
      for (const p of op.params.filter((x) => x.in === 'query')) if (r() < 0.5) q.set(p.name, r() < 0.5 ? String(pick(r, NASTY_NUMBERS)) : randomString(r));
      if (r() < 0.1) q.set(encode(randomString(r)), encode(randomString(r)));
      if (op.path.endsWith('/logs')) q.delete('follow');
      const qs = q.toString();
      if (qs) path += `?${qs}`;
      const who = pick(r, ['admin', 'admin', 'operator', 'viewer', 'agent', 'none', 'garbage'] as const);
      // the test's own admin token is not revoked from under it
      const auth = who === 'none' ? undefined : who === 'garbage' ? `Bearer ${randomString(r).replace(/[^\x21-\x7e]/g, 'x') || 'x'}` : `Bearer ${tokens[who === 'admin' && op.method === 'DELETE' && op.path.startsWith('/v1/tokens') ? 'operator' : who]}`;
      const key = `${op.method} ${op.path}`;
      let body: string | Buffer | undefined;
      let type: string | undefined = 'application/json';
      if (op.method !== 'GET' && op.method !== 'DELETE') {
        const k = int(r, 10);
        const valid = VALID_BODIES[key];
        if (k < 5 && valid) body = JSON.stringify(mutate(r, valid));
        else if (k < 7) body = JSON.stringify(randomValue(r));
        else if (k < 8) body = Buffer.from(Array.from({ length: int(r, 64) }, () => int(r, 256)));
        else if (k < 9) {
          body = randomString(r);
          type = pick(r, ['text/plain', 'application/x-www-form-urlencoded', 'application/json; charset=latin1', 'multipart/form-data']);
        } else body = JSON.stringify(valid ?? {});
      }
      let status = 0;
      try {
        const res = await fetch(`${s.url}${path}`, {
          method: op.method,
          headers: { ...(auth ? { authorization: auth } : {}), ...(body !== undefined && type ? { 'content-type': type } : {}) },
          ...(body !== undefined ? { body: typeof body === 'string' ? body : new Uint8Array(body) } : {}),
          signal: AbortSignal.timeout(10_000),
        });
        status = res.status;
        const text = await res.text();
        if (status >= 500) failures.push(`${op.method} ${path} [${who}] body=${String(body).slice(0, 200)} → ${status} ${text.slice(0, 300)}`);
      } catch (e) {
        failures.push(`${op.method} ${path} [${who}] → ${(e as Error).message}`);
      }
      count(status);
    }

    async function webhookCase(): Promise<void> {
      const k = int(r, 10);
      const payload = k < 6 ? mutate(r, workflowJob(r)) : k < 8 ? workflowJob(r) : randomValue(r);
      const body = Buffer.from(k === 9 ? randomString(r) : JSON.stringify(payload));
      const headers: Record<string, string> = {
        'content-type': 'application/json',
        'x-github-event': r() < 0.85 ? 'workflow_job' : pick(r, ['ping', 'push', '', 'workflow_run', randomString(r).replace(/[^\x21-\x7e]/g, '') || 'x']),
        'x-github-delivery': r() < 0.9 ? `d-${int(r, 400)}` : randomString(r).replace(/[^\x21-\x7e]/g, 'z') || 'z',
        'x-hub-signature-256': r() < 0.85 ? signBody(body) : pick(r, ['sha256=00', 'md5=1', '', signBody(Buffer.from('other'))]),
      };
      for (const [h, v] of Object.entries(headers)) if (v === '') delete headers[h];
      try {
        const res = await fetch(`${s.url}${WEBHOOK_PATH}`, { method: 'POST', headers, body: new Uint8Array(body), signal: AbortSignal.timeout(10_000) });
        const text = await res.text();
        count(res.status);
        if (res.status >= 500) failures.push(`webhook ${body.toString().slice(0, 200)} → ${res.status} ${text.slice(0, 300)}`);
      } catch (e) {
        failures.push(`webhook → ${(e as Error).message}`);
      }
    }

    const validHello = (name: string) => ({
      type: 'hello',
      protocol: PROTOCOL_VERSION,
      host: { name, arch: 'amd64', cpus: 4, memoryBytes: 8 * 1024 ** 3, diskBytes: 100 * 1024 ** 3, accel: 'tcg', labels: [], driver: 'memory', agentVersion: 'fuzz' },
      running: [],
      finished: [],
    });
    const agentMessages = (jobId: number): Record<string, unknown>[] => [
      { type: 'host.status', mirror: { state: 'running', healthy: true, restarts: 0, cacheBytes: 10, upstream: 'https://r', address: '127.0.0.1:5000' } },
      { type: 'job.phase', jobId, attempt: 1, phase: 'booting' },
      { type: 'job.log', jobId, attempt: 1, seq: 0, stream: 'stdout', data: Buffer.from('hi').toString('base64') },
      { type: 'job.start', jobId, attempt: 1 },
      { type: 'job.done', result: { jobId, attempt: 1, outcome: 'exited', exitCode: 0, logChunks: 0 } },
      { type: 'host.sleeping', requestId: 1, power: { driver: 'none' } },
      { type: 'power.error', action: 'sleep', code: 'x', message: 'y' },
    ];

    /**
     * A binary cache chunk frame (u32 big-endian header length, JSON header, data) with a mutated header, a
     * small or empty data part, and now and then a header length that lies.
     */
    const chunkFrame = (): Buffer => {
      const header = Buffer.from(JSON.stringify(mutate(r, { type: 'cache.chunk', tv: CACHE_TRANSFER_VERSION, transferId: `fuzz-${int(r, 1e6)}-transfer`, seq: int(r, 4), offset: 0 })));
      const len = Buffer.alloc(4);
      len.writeUInt32BE(r() < 0.9 ? header.length : int(r, 2 ** 32));
      return Buffer.concat([len, header, Buffer.alloc(int(r, 64), int(r, 256))]);
    };

    /** One connection: a (mutated) hello, then (mutated) messages until the server closes it or we do. */
    async function agentCase(n: number): Promise<number> {
      const name = `fuzz-host-${int(r, 6)}`;
      const ws = new WebSocket(`${s.url.replace(/^http/, 'ws')}/v1/agent/connect`, { headers: { authorization: `Bearer ${r() < 0.9 ? tokens.agent : tokens.viewer}` } });
      const closed = new Promise<{ code: number; reason: string }>((resolve) => ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() })));
      ws.on('error', () => undefined);
      const opened = await new Promise<boolean>((resolve) => {
        ws.once('open', () => resolve(true));
        ws.once('unexpected-response', (_req, res) => {
          count(res.statusCode ?? 0);
          if ((res.statusCode ?? 0) >= 500) failures.push(`agent upgrade → ${res.statusCode}`);
          resolve(false);
        });
        ws.once('error', () => resolve(false));
      });
      if (!opened) return 1;
      const msgs: (string | Buffer)[] = [];
      const hk = int(r, 10);
      msgs.push(hk < 6 ? JSON.stringify(validHello(name)) : hk < 9 ? JSON.stringify(mutate(r, validHello(name))) : JSON.stringify(randomValue(r)));
      for (let i = 0; i < n - 1; i++) {
        const k = int(r, 10);
        const base = pick(r, agentMessages(pick(r, [...jobIds, 1, 5, 2 ** 40])));
        if (k < 5) msgs.push(JSON.stringify(mutate(r, base)));
        else if (k < 8) msgs.push(JSON.stringify(base));
        else if (k < 9) msgs.push(r() < 0.5 ? Buffer.from(Array.from({ length: int(r, 32) }, () => int(r, 256))) : chunkFrame());
        else msgs.push(randomString(r));
      }
      for (const m of msgs) {
        if (ws.readyState !== WebSocket.OPEN) break;
        ws.send(m, { binary: Buffer.isBuffer(m) });
      }
      // let the server answer (or close), then close our side
      await Promise.race([closed, new Promise((res) => setTimeout(res, 100))]);
      if (ws.readyState === WebSocket.OPEN) ws.close(1000);
      const c = await closed;
      if (c.code === 1011) failures.push(`agent: closed 1011 ${c.reason} after ${msgs.map((m) => (Buffer.isBuffer(m) ? '<binary>' : m.slice(0, 120))).join(' | ')}`);
      return msgs.length;
    }

    // What earlier runs found (each was a 500): a signed delivery that is JSON null, or holds NUL or a lone
    // surrogate (jsonb stores neither). Now 400s.
    for (const text of ['null', '[1]', '{"action":"queued","x":"\\u0000"}', '{"action":"queued","x":"\\ud800"}']) {
      const res = await fetch(`${s.url}${WEBHOOK_PATH}`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'x-github-event': 'workflow_job', 'x-github-delivery': `reg-${text.length}-${text.charCodeAt(text.length - 3)}`, 'x-hub-signature-256': signBody(text) },
        body: text,
      });
      assert.equal(res.status, 400, `${text} → ${res.status} ${await res.text()}`);
    }

    // API and webhook cases, 16 at a time; agent connections 4 at a time alongside.
    let api = 0;
    let hooks = 0;
    let agentMsgs = 0;
    let next = 0;
    const apiN = Math.round(CASES * 0.6);
    const hookN = Math.round(CASES * 0.25);
    const worker = async () => {
      for (;;) {
        const i = next++;
        if (i >= apiN + hookN) return;
        if (i < apiN) {
          await apiCase();
          api++;
        } else {
          await webhookCase();
          hooks++;
        }
      }
    };
    const agentTarget = CASES - apiN - hookN;
    const agentWorker = async () => {
      while (agentMsgs < agentTarget) agentMsgs += await agentCase(2 + int(r, 12));
    };
    await Promise.all([...Array.from({ length: 16 }, worker), ...Array.from({ length: 4 }, agentWorker)]);
    const ms = Date.now() - t0;
    console.error(`fuzz: ${api} API requests, ${hooks} webhook deliveries, ${agentMsgs} agent messages in ${ms} ms; statuses ${JSON.stringify([...statuses].sort((a, b) => a[0] - b[0]))}`);

    // Still alive and answering; nothing logged at error level.
    assert.equal(s.proc.proc.exitCode, null, 'the server exited');
    assert.equal((await fetch(`${s.url}/healthz`)).status, 200);
    assert.equal((await s.client.request<{ jobs: unknown[] }>('GET', '/v1/jobs?limit=1')).jobs.length, 1);
    const errors = s.proc
      .output()
      .split('\n')
      .filter((l) => /"level":(50|60)|unhandled|uncaught/i.test(l))
      // an agent's own report that its host failed to sleep (a fuzzed power.error) is logged as an error, rightly
      .filter((l) => !l.includes('"msg":"the host could not go to sleep"'));
    if (failures.length > 0) console.error(`server log, error lines:\n${errors.slice(0, 5).join('\n')}`);
    assert.deepEqual(failures.slice(0, 20), [], `${failures.length} failures (seed ${seed})`);
    assert.deepEqual(errors.slice(0, 10), [], `error lines in the server's log (seed ${seed})`);
  } finally {
    await s.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
