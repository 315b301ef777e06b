/**
 * The per-host registry mirror: a supervised CNCF distribution registry (Debian's docker-registry) in proxy
 * mode. kiln writes its config (never Debian's default), keeps upstream credentials in a host-only file,
 * restarts the process with backoff when it dies (2.8.2 exits at start-up when the upstream is unreachable),
 * and reports health and cache size. VMs reach it at a guest-visible address; their configs come from
 * renderGuestMirrorConfigs in src/oci/mirror-config.ts.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { accessSync, constants } from 'node:fs';
import { chmod, lstat, mkdir, readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import type { MirrorStatusMsg } from '../core/agent-protocol.ts';
import { startUpstreamFront, type UpstreamFront } from './upstream-front.ts';
import { KilnError } from '../core/errors.ts';
import { DOCKER_HUB_UPSTREAM, assertHostPort, assertRegistryName, assertUpstreamUrl, renderMirrorServerConfig } from '../oci/mirror-config.ts';

export interface MirrorOptions {
  /**
   * kiln's data directory; the mirror keeps config, secret and cache under `<dataDir>/mirror` (Docker Hub's)
   * or `<dataDir>/mirror-<registry>` (another registry's).
   */
  dataDir: string;
  /** The registry this mirror stands in for in the guests: docker.io (default), or ghcr.io, quay.io, …. */
  registry?: string;
  /** host:port to listen on: loopback, or an address the host's VMs can reach. */
  listen: string;
  /** The address VMs use (10.0.2.100:5000, forwarded to the mirror's host port); reported in status(). */
  guestAddress?: string;
  upstream?: { url: string; username?: string | undefined; password?: string | undefined };
  binary?: string;
  backoff?: { initialMs: number; maxMs: number; resetAfterMs: number };
  /** status() re-measures the cache (a walk of the storage tree) at most this often; default 15 s. */
  cacheSizeMaxAgeMs?: number;
  logger?: Logger;
}

export type MirrorState = MirrorStatusMsg['state'];

/** What the agent reports (the protocol's message), plus the last exit's output, which stays on the host. */
export type MirrorStatus = Omit<MirrorStatusMsg, 'lastExit'> & { lastExit?: NonNullable<MirrorStatusMsg['lastExit']> & { output: string } };

export interface MirrorEvents {
  spawn: [pid: number];
  exit: [info: { code: number | null; signal: string | null; output: string }];
  restartScheduled: [delayMs: number];
}

const DEFAULT_BACKOFF = { initialMs: 500, maxMs: 30_000, resetAfterMs: 60_000 };

function onPath(cmd: string): boolean {
  for (const dir of (process.env.PATH ?? '').split(':').concat(['/usr/bin', '/bin'])) {
    try {
      accessSync(join(dir, cmd), constants.X_OK);
      return true;
    } catch {
      /* next */
    }
  }
  return false;
}

/** Bytes allocated on disk under `dir` (like du), 0 when it does not exist. */
export async function diskUsage(dir: string): Promise<number> {
  let total = 0;
  let entries: string[];
  try {
    entries = await readdir(dir);
  } catch {
    return 0;
  }
  for (const name of entries) {
    const p = join(dir, name);
    const st = await lstat(p).catch(() => undefined);
    if (!st) continue;
    total += st.blocks * 512;
    if (st.isDirectory()) total += await diskUsage(p);
  }
  return total;
}

export class RegistryMirror extends EventEmitter<MirrorEvents> {
  readonly dir: string;
  readonly registry: string;
  readonly configFile: string;
  readonly storageDir: string;
  private readonly opts: MirrorOptions;
  private readonly backoff: { initialMs: number; maxMs: number; resetAfterMs: number };
  private readonly upstream: { url: string; username?: string | undefined; password?: string | undefined };
  private proc: ChildProcess | undefined;
  private state: MirrorState = 'stopped';
  private restarts = 0;
  private failures = 0;
  private timer: NodeJS.Timeout | undefined;
  private stopping = false;
  private output = '';
  private lastExit: MirrorStatus['lastExit'];
  private cacheSize: { bytes: number; at: number } | undefined;
  private front: UpstreamFront | undefined;

  constructor(opts: MirrorOptions) {
    super();
    assertHostPort(opts.listen, 'mirror listen address');
    if (opts.guestAddress) assertHostPort(opts.guestAddress, 'guest-visible mirror address');
    this.upstream = opts.upstream ?? { url: DOCKER_HUB_UPSTREAM };
    assertUpstreamUrl(this.upstream.url);
    this.opts = opts;
    this.backoff = opts.backoff ?? DEFAULT_BACKOFF;
    this.registry = opts.registry ?? 'docker.io';
    if (this.registry !== 'docker.io') assertRegistryName(this.registry);
    this.dir = join(opts.dataDir, this.registry === 'docker.io' ? 'mirror' : `mirror-${this.registry}`);
    this.configFile = join(this.dir, 'config.yml');
    this.storageDir = join(this.dir, 'storage');
  }

  /** host:port the registry listens on. */
  get listen(): string {
    return this.opts.listen;
  }

  /** Writes the config (0600: it may hold upstream credentials) and starts supervising the registry. */
  async start(): Promise<void> {
    if (this.state !== 'stopped') return;
    this.stopping = false;
    await mkdir(this.storageDir, { recursive: true, mode: 0o700 });
    await chmod(this.dir, 0o700);
    const secretFile = join(this.dir, 'http-secret');
    let secret = await readFile(secretFile, 'utf8').catch(() => '');
    if (!secret) {
      secret = randomBytes(24).toString('hex');
      await writeFile(secretFile, secret, { mode: 0o600 });
    }
    // distribution reaches its upstream through kiln's front, which makes each cold blob cross once (upstream-front.ts).
    this.front ??= await startUpstreamFront({ upstream: this.upstream.url, spoolDir: join(this.dir, 'front-spool'), ...(this.opts.logger ? { logger: this.opts.logger } : {}) });
    const config = renderMirrorServerConfig({ listen: this.opts.listen, storageDir: this.storageDir, upstream: { ...this.upstream, url: this.front.url }, secret: secret.trim() });
    await writeFile(this.configFile, config, { mode: 0o600 });
    await chmod(this.configFile, 0o600);
    this.spawnOnce();
  }

  private spawnOnce(): void {
    this.state = 'starting';
    const binary = this.opts.binary ?? 'docker-registry';
    // setpriv makes the registry die with us (parent-death signal), so an agent crash leaves no orphan.
    const [cmd, args] = onPath('setpriv')
      ? ['setpriv', ['--pdeathsig', 'TERM', '--', binary, 'serve', this.configFile]]
      : [binary, ['serve', this.configFile]];
    const started = Date.now();
    this.output = '';
    const p = spawn(cmd as string, args as string[], { stdio: ['ignore', 'pipe', 'pipe'] });
    this.proc = p;
    const keep = (d: Buffer) => {
      const text = d.toString();
      this.output = (this.output + text).slice(-4000);
      for (const line of text.split('\n')) if (line.trim()) this.opts.logger?.debug({ mirror: true }, line.trim());
    };
    p.stdout?.on('data', keep);
    p.stderr?.on('data', keep);
    p.on('error', (e) => {
      this.opts.logger?.error({ err: e }, 'mirror: cannot start the registry');
    });
    p.once('spawn', () => {
      if (p.pid !== undefined) this.emit('spawn', p.pid);
      this.state = 'running';
      this.opts.logger?.info({ pid: p.pid, registry: this.registry, listen: this.opts.listen, upstream: this.upstream.url }, 'mirror: registry started');
    });
    p.once('close', (code, signal) => {
      if (this.proc === p) this.proc = undefined;
      const info = { code, signal: signal ?? null, output: this.output.slice(-1000) };
      this.lastExit = { ...info, at: new Date().toISOString() };
      this.emit('exit', info);
      if (this.stopping) {
        this.state = 'stopped';
        return;
      }
      this.failures = Date.now() - started > this.backoff.resetAfterMs ? 1 : this.failures + 1;
      const delay = Math.min(this.backoff.initialMs * 2 ** (this.failures - 1), this.backoff.maxMs);
      this.restarts++;
      this.state = 'backoff';
      this.opts.logger?.warn({ code, signal, delayMs: delay, output: info.output }, 'mirror: registry exited; restarting');
      this.emit('restartScheduled', delay);
      this.timer = setTimeout(() => {
        this.timer = undefined;
        if (!this.stopping) this.spawnOnce();
      }, delay);
    });
  }

  /** GET /v2/ on the mirror answers 200. */
  async health(timeoutMs = 2000): Promise<boolean> {
    if (this.state !== 'running') return false;
    try {
      const r = await fetch(`http://${this.opts.listen}/v2/`, { signal: AbortSignal.timeout(timeoutMs) });
      await r.arrayBuffer();
      return r.status === 200;
    } catch {
      return false;
    }
  }

  /** Resolves once healthy; throws mirror.unhealthy after `timeoutMs` (polls, no fixed sleep). */
  async waitHealthy(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    let delay = 20;
    while (!(await this.health())) {
      if (Date.now() > deadline) {
        throw new KilnError('mirror.unhealthy', `the registry mirror on ${this.opts.listen} did not become healthy within ${timeoutMs} ms`, {
          hint: `check that the upstream ${this.upstream.url} is reachable (distribution exits at start-up without it); last output: ${this.lastExit?.output.trim().split('\n').pop() ?? 'none'}`,
          kind: 'unavailable',
        });
      }
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 250);
    }
  }

  /** What the agent reports for `kiln hosts` and /metrics. */
  async status(): Promise<MirrorStatus> {
    const s: MirrorStatus = {
      state: this.state,
      healthy: await this.health(),
      restarts: this.restarts,
      cacheBytes: await this.cacheBytes(),
      upstream: this.upstream.url,
      address: this.opts.listen,
      registry: this.registry,
    };
    if (this.opts.guestAddress) s.guestAddress = this.opts.guestAddress;
    if (this.proc?.pid !== undefined) s.pid = this.proc.pid;
    if (this.lastExit) s.lastExit = this.lastExit;
    return s;
  }

  private async cacheBytes(): Promise<number> {
    const maxAge = this.opts.cacheSizeMaxAgeMs ?? 15_000;
    if (!this.cacheSize || Date.now() - this.cacheSize.at >= maxAge) this.cacheSize = { bytes: await diskUsage(this.storageDir), at: Date.now() };
    return this.cacheSize.bytes;
  }

  /** Stops supervising and the registry (TERM, then KILL after 5 s). */
  async stop(): Promise<void> {
    this.stopping = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    const p = this.proc;
    if (p && p.exitCode === null && p.signalCode === null) {
      const closed = new Promise<void>((r) => p.once('close', () => r()));
      p.kill('SIGTERM');
      const t = setTimeout(() => p.kill('SIGKILL'), 5000);
      await closed;
      clearTimeout(t);
    }
    const front = this.front;
    this.front = undefined;
    await front?.close();
    this.state = 'stopped';
  }

  /** Blob fetches the upstream saw from this mirror, and requests that shared one (upstream-front.ts). */
  frontStats(): { blobFetches: number; blobShared: number } {
    return this.front?.stats() ?? { blobFetches: 0, blobShared: 0 };
  }
}
