/**
 * A small HTTP front kiln puts between a mirror (distribution 2.8 in proxy mode) and its upstream, so the
 * upstream sends each blob once. distribution 2.8 answers a blob it does not have by streaming it from the
 * upstream to the client *and*, at the same time, fetching it again to store it (proxyblobstore's ServeBlob
 * and storeLocal): every cold blob crossed the upstream link twice (seen in the upstream's access log).
 *
 * The front passes every request through unchanged (method, path, headers, body; the upstream's answer
 * likewise), except a blob GET without a Range header: requests for the same blob path share one upstream
 * fetch. Its body is spooled to a file under the mirror's directory while every requester is served from that
 * file as it grows; the spool stays `keepMs` after the fetch ends (the second request can come after the
 * first finished), then it is removed. Redirects of a shared fetch (Docker Hub sends blobs from a CDN) are
 * followed here, so the CDN too sends the blob once; Authorization is not sent to another host.
 * When the upstream cannot be reached the front drops the connection without an answer, as the upstream
 * itself would look to distribution (which exits at start-up then, and the mirror's supervisor backs off).
 */
import { once, EventEmitter } from 'node:events';
import { mkdir, open, rm, type FileHandle } from 'node:fs/promises';
import { request as httpRequest, createServer, type IncomingHttpHeaders, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { request as httpsRequest } from 'node:https';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import type { Logger } from 'pino';

export interface UpstreamFront {
  /** http://127.0.0.1:PORT: the mirror's remote URL. */
  url: string;
  /** Upstream blob fetches started (shared ones count once). */
  stats(): { blobFetches: number; blobShared: number };
  close(): Promise<void>;
}

const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-authenticate', 'proxy-authorization', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'host']);
const BLOB_PATH = /^\/v2\/.+\/blobs\/sha256:[0-9a-f]{64}$/;

function endToEnd(h: IncomingHttpHeaders): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (const [k, v] of Object.entries(h)) if (v !== undefined && !HOP_BY_HOP.has(k.toLowerCase())) out[k] = v;
  return out;
}

function send(url: URL, method: string, headers: Record<string, string | string[]>): { req: ReturnType<typeof httpRequest>; res: Promise<IncomingMessage> } {
  const req = (url.protocol === 'https:' ? httpsRequest : httpRequest)(url, { method, headers: { ...headers, host: url.host } });
  const res = new Promise<IncomingMessage>((resolve, reject) => {
    req.once('response', resolve);
    req.once('error', reject);
  });
  return { req, res };
}

interface Flight {
  file: string;
  written: number;
  done: boolean;
  error: Error | undefined;
  status: number | undefined;
  headers: Record<string, string | string[]>;
  events: EventEmitter;
  /** Resolves once the final answer's status is known (200: shared; anything else: each request alone). */
  ready: Promise<void>;
  /** A final answer other than 200, unread, for the request that started the fetch. */
  answer?: IncomingMessage;
}

export async function startUpstreamFront(o: { upstream: string; spoolDir: string; keepMs?: number; logger?: Logger }): Promise<UpstreamFront> {
  const upstream = new URL(o.upstream);
  const keepMs = o.keepMs ?? 60_000;
  await rm(o.spoolDir, { recursive: true, force: true });
  await mkdir(o.spoolDir, { recursive: true, mode: 0o700 });
  const flights = new Map<string, Flight>();
  const timers = new Set<NodeJS.Timeout>();
  let seq = 0;
  let blobFetches = 0;
  let blobShared = 0;

  const passThrough = async (req: IncomingMessage, res: ServerResponse) => {
    const { req: up, res: answer } = send(new URL(req.url ?? '/', upstream), req.method ?? 'GET', endToEnd(req.headers));
    req.pipe(up);
    let ur: IncomingMessage;
    try {
      ur = await answer;
    } catch (e) {
      o.logger?.debug({ err: e, path: req.url }, 'mirror front: upstream unreachable');
      req.socket.destroy();
      return;
    }
    res.writeHead(ur.statusCode ?? 502, endToEnd(ur.headers));
    ur.pipe(res);
    ur.once('error', () => res.destroy());
    res.once('close', () => ur.destroy());
  };

  /** Fetches a blob, following redirects, into the flight's spool file. */
  const fly = async (f: Flight, path: string, headers: Record<string, string | string[]>, markReady: () => void) => {
    let fh: FileHandle | undefined;
    try {
      let url = new URL(path, upstream);
      let h = headers;
      let ur: IncomingMessage | undefined;
      for (let hop = 0; ; hop++) {
        const { req, res } = send(url, 'GET', h);
        req.end();
        ur = await res;
        const loc = ur.headers.location;
        if (![301, 302, 303, 307, 308].includes(ur.statusCode ?? 0) || !loc || hop >= 5) break;
        ur.resume();
        const next = new URL(loc, url);
        if (next.host !== url.host) h = Object.fromEntries(Object.entries(h).filter(([k]) => k.toLowerCase() !== 'authorization'));
        url = next;
      }
      f.status = ur.statusCode ?? 502;
      f.headers = endToEnd(ur.headers);
      if (f.status !== 200) {
        // Not shareable (a 401 asking for a token, a 404): the request that started it gets this answer.
        f.answer = ur;
        f.done = true;
        return;
      }
      fh = await open(f.file, 'w', 0o600);
      markReady();
      for await (const chunk of ur as AsyncIterable<Buffer>) {
        await fh.write(chunk);
        f.written += chunk.length;
        f.events.emit('progress');
      }
      f.done = true;
    } catch (e) {
      f.error = e instanceof Error ? e : new Error(String(e));
    } finally {
      await fh?.close().catch(() => undefined);
      markReady();
      f.events.emit('progress');
      if (f.error || f.status !== 200) flights.delete(path);
      const t = setTimeout(() => {
        timers.delete(t);
        if (flights.get(path) === f) flights.delete(path);
        void rm(f.file, { force: true });
      }, f.error || f.status !== 200 ? 0 : keepMs);
      t.unref();
      timers.add(t);
    }
  };

  /** Serves a shared fetch from its spool file as it grows. */
  const serveSpool = async (f: Flight, res: ServerResponse) => {
    res.writeHead(200, f.headers);
    let fh: FileHandle | undefined;
    let pos = 0;
    const closed = once(res, 'close').then(() => 'closed' as const);
    try {
      fh = await open(f.file, 'r');
      for (;;) {
        if (pos < f.written) {
          const buf = Buffer.allocUnsafe(Math.min(f.written - pos, 1 << 20));
          const { bytesRead } = await fh.read(buf, 0, buf.length, pos);
          pos += bytesRead;
          if (!res.write(buf.subarray(0, bytesRead)) && (await Promise.race([once(res, 'drain').then(() => 'drain' as const), closed])) === 'closed') return;
          continue;
        }
        if (f.error) throw f.error;
        if (f.done) {
          res.end();
          return;
        }
        if ((await Promise.race([once(f.events, 'progress').then(() => 'progress' as const), closed])) === 'closed') return;
      }
    } catch (e) {
      o.logger?.warn({ err: e }, 'mirror front: a shared blob fetch failed');
      res.destroy();
    } finally {
      await fh?.close().catch(() => undefined);
    }
  };

  const server: Server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0]!;
    if (req.method !== 'GET' || req.headers.range !== undefined || !BLOB_PATH.test(path) || (req.url ?? '').includes('?')) {
      void passThrough(req, res);
      return;
    }
    req.resume();
    void (async () => {
      let f = flights.get(path);
      const joined = f !== undefined;
      if (f) blobShared++;
      else {
        blobFetches++;
        let markReady: () => void = () => undefined;
        const ready = new Promise<void>((r) => (markReady = r));
        const flight: Flight = { file: join(o.spoolDir, `blob-${++seq}`), written: 0, done: false, error: undefined, status: undefined, headers: {}, events: new EventEmitter(), ready };
        flight.events.setMaxListeners(0);
        flights.set(path, flight);
        f = flight;
        void fly(flight, path, endToEnd(req.headers), markReady);
      }
      await f.ready;
      if (f.status === 200 && !f.error) return serveSpool(f, res);
      if (f.error && f.written === 0 && f.status === undefined) {
        req.socket.destroy(); // unreachable upstream: look like it
        return;
      }
      if (!joined && f.answer) {
        res.writeHead(f.answer.statusCode ?? 502, endToEnd(f.answer.headers));
        f.answer.pipe(res);
        return;
      }
      // Not a shareable answer (a 401 for a missing token, a 404): a request that joined asks on its own.
      const { req: up, res: answer } = send(new URL(req.url ?? '/', upstream), 'GET', endToEnd(req.headers));
      up.end();
      try {
        const ur = await answer;
        res.writeHead(ur.statusCode ?? 502, endToEnd(ur.headers));
        ur.pipe(res);
      } catch {
        req.socket.destroy();
      }
    })();
  });
  server.keepAliveTimeout = 30_000;
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    stats: () => ({ blobFetches, blobShared }),
    async close() {
      for (const t of timers) clearTimeout(t);
      timers.clear();
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
      await rm(o.spoolDir, { recursive: true, force: true });
    },
  };
}
