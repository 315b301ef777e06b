/**
 * Runs the VMs the server asks for, through the VmDriver port, and turns what they do into protocol
 * messages: phases, log chunks (numbered per attempt, stdout and stderr kept in order; the agent keeps them
 * until the server acknowledges them), and a result that is kept until the server acknowledges it, so nothing
 * is lost across a reconnect. A job's command starts only once the server granted its start lease
 * (`job.start` → `start.ok`): the driver's start gate waits for it.
 */
import type { Logger } from 'pino';
import { MAX_LOG_CHUNK_BYTES, type AgentMessage, type CacheFetchMsg, type JobResultMsg, type LaunchSpec, type RunningJobMsg } from '../core/agent-protocol.ts';
import { toKilnError } from '../core/errors.ts';
import { finishJobCache, openJobCache, type JobCacheOutcome } from '../vm/cache-job.ts';
import type { CacheLease, CacheStore } from '../vm/cache-store.ts';
import type { RunningVm, VmDriver, VmResult, VmSpec, VmStartInfo } from '../vm/driver.ts';
import type { ImageResolver } from './images.ts';
import { makeSecretMasker, type Masker } from './secret-mask.ts';
import type { SnapshotShape } from './snapshots.ts';

export interface SupervisorEvents {
  launched(jobId: number, attempt: number): void;
  finished(result: JobResultMsg): void;
}

interface Entry {
  jobId: number;
  attempt: number;
  vm?: RunningVm;
  phase: 'booting' | 'running';
  seq: number;
  pending?: { stream: 'stdout' | 'stderr'; bufs: Buffer[]; size: number };
  result?: JobResultMsg;
  stopReason?: string;
  /** Waiting for the server's answer to `job.start`. */
  lease?: { granted(): void; refused(reason: string): void };
  /** The server granted the start (it has recorded the job running). */
  leased?: boolean;
  /** Masks the job's secret env values in its output (secret-mask.ts). */
  mask?: Masker;
  /** How its VM came up (warm or cold), told to the server with the start request. */
  startInfo?: VmStartInfo | undefined;
  /** Ends a cache fetch under way before the VM starts (the job was stopped). */
  stopFetch?: (() => void) | undefined;
}

const startMsg = (e: Entry): AgentMessage => ({
  type: 'job.start',
  jobId: e.jobId,
  attempt: e.attempt,
  ...(e.startInfo ? { start: e.startInfo.start, bootMs: e.startInfo.bootMs } : {}),
});
export interface CacheAnswer {
  write: boolean;
  reason?: string;
  ref?: string;
  commit?: string;
}

/** A VM still booting this long after its launch is reported as booting (a faster one goes straight to running). */
const BOOT_REPORT_MS = 100;

/** How long a finished job's cache waits for the server's cache.answer before it is discarded (not saved). */
const CACHE_ASK_TIMEOUT_MS = 5 * 60_000;

export interface Supervisor {
  launch(jobId: number, attempt: number, spec: LaunchSpec): void;
  stop(jobId: number, attempt: number, reason: string): void;
  ack(jobId: number, attempt: number): void;
  /** The server's answer to a start-lease request. */
  startAnswer(jobId: number, attempt: number, ok: boolean, reason?: string): void;
  /** Start-lease requests still unanswered, to send again after a reconnect. */
  pendingStarts(): AgentMessage[];
  /** The server's answer to `cache.ask` (may this job's cache be committed?). */
  cacheAnswer(jobId: number, attempt: number, a: CacheAnswer): void;
  /** cache.ask requests still unanswered, to send again after a reconnect. */
  pendingCacheAsks(): AgentMessage[];
  /** Everything not yet acknowledged, for hello: running VMs and finished ones whose result is unacked. */
  running(): RunningJobMsg[];
  /** Results waiting for an acknowledgement, to resend after a reconnect. */
  unacked(): JobResultMsg[];
  /** Stops every VM (agent shutdown). */
  stopAll(reason: string): Promise<void>;
  size(): number;
}

/** What the protocol carries of a job's cache. */
export function cacheOutcomeMsg(c: JobCacheOutcome): NonNullable<JobResultMsg['cache']> {
  return {
    key: c.key,
    hit: c.hit,
    ...(c.version ? { version: c.version } : {}),
    ...(c.committed ? { committed: { id: c.committed.id, bytes: c.committed.bytes, seconds: c.committed.commitSeconds ?? 0, ...(c.committed.sha256 ? { sha256: c.committed.sha256 } : {}) } } : {}),
    ...(c.notSaved ? { notSaved: c.notSaved.slice(0, 1000) } : {}),
    ...(c.evicted ? { evicted: c.evicted.length } : {}),
    ...(c.fetch ? { fetch: c.fetch } : {}),
  };
}

export function resultOf(jobId: number, attempt: number, r: VmResult): JobResultMsg {
  const base = { jobId, attempt, timings: r.timings };
  switch (r.outcome) {
    case 'exited':
      return { ...base, outcome: 'exited', exitCode: Math.max(0, Math.min(255, r.exitCode)) };
    case 'timed_out':
      return { ...base, outcome: 'timed_out' };
    case 'killed':
      return { ...base, outcome: 'killed', message: r.reason.slice(0, 4000) };
    case 'boot_failed':
    case 'crashed':
      return { ...base, outcome: r.outcome, code: r.code, message: `${r.message}${r.consoleTail.length ? `\n${r.consoleTail.slice(-10).join('\n')}` : ''}`.slice(0, 4000) };
  }
}

export function makeSupervisor(opts: {
  driver: VmDriver;
  images: ImageResolver;
  /** Sends a message now or queues it for the next connection. */
  send(m: AgentMessage): void;
  log: Logger;
  /** Host-wide additions to every VM (the registry mirror's forward and address). */
  vm?: Pick<VmSpec, 'forwards' | 'registryMirror' | 'registryMirrors'>;
  /** The host's warm caches (docs/caches.md); without it a job's cache request is noted and the job runs without one. */
  caches?: CacheStore;
  events?: Partial<SupervisorEvents>;
  flushMs?: number;
  /** Told of every launch's image and VM shape (the warm-start planner counts uses). */
  noteUse?(shape: SnapshotShape): void;
  /** Fetches a newer version of a job's cache from a peer host before the job starts (cache-transfer.ts); never throws. */
  fetchCache?(jobId: number, attempt: number, key: string, signal: AbortSignal, sizeBytes?: number): Promise<CacheFetchMsg>;
}): Supervisor {
  const jobs = new Map<number, Entry>();
  const cacheAsks = new Map<number, { attempt: number; answer(a: CacheAnswer): void }>();
  const askCache = (jobId: number, attempt: number): Promise<CacheAnswer> =>
    new Promise((resolve) => {
      const t = setTimeout(() => done({ write: false, reason: 'the server did not answer in time' }), CACHE_ASK_TIMEOUT_MS);
      t.unref();
      const done = (a: CacheAnswer) => {
        clearTimeout(t);
        cacheAsks.delete(jobId);
        resolve(a);
      };
      cacheAsks.set(jobId, { attempt, answer: done });
      opts.send({ type: 'cache.ask', jobId, attempt });
    });
  const flushMs = opts.flushMs ?? 10;
  let timer: NodeJS.Timeout | undefined;

  const flushEntry = (e: Entry) => {
    const p = e.pending;
    if (!p) return;
    e.pending = undefined;
    const data = e.mask ? e.mask(Buffer.concat(p.bufs, p.size)) : Buffer.concat(p.bufs, p.size);
    for (let off = 0; off < data.length; off += MAX_LOG_CHUNK_BYTES) {
      opts.send({ type: 'job.log', jobId: e.jobId, attempt: e.attempt, seq: e.seq++, stream: p.stream, data: data.subarray(off, off + MAX_LOG_CHUNK_BYTES).toString('base64') });
    }
  };
  const flushAll = () => {
    timer = undefined;
    for (const e of jobs.values()) flushEntry(e);
  };
  const output = (e: Entry, stream: 'stdout' | 'stderr', chunk: Buffer) => {
    notePhase(e);
    if (e.pending && e.pending.stream !== stream) flushEntry(e);
    e.pending ??= { stream, bufs: [], size: 0 };
    e.pending.bufs.push(Buffer.from(chunk));
    e.pending.size += chunk.length;
    if (e.pending.size >= MAX_LOG_CHUNK_BYTES) flushEntry(e);
    else timer ??= setTimeout(flushAll, flushMs);
  };
  const notePhase = (e: Entry) => {
    if (e.phase === 'running' || e.result) return;
    if (e.leased) {
      e.phase = 'running'; // the server recorded it when it granted the start
      return;
    }
    if (!e.vm) return;
    if (e.vm.phase() === 'running' || e.vm.phase() === 'stopping') {
      // A driver without a start gate: report it as before (no lease, so no at-most-once promise).
      e.phase = 'running';
      opts.send({ type: 'job.phase', jobId: e.jobId, attempt: e.attempt, phase: 'running' });
    }
  };
  // A VM that asks to start (or runs) within BOOT_REPORT_MS of its launch is never reported as booting: its
  // start records it running at once. A booting record sent just before would only hold the start back: both
  // statements update the job's row, so the start's waits for the booting one to commit (bench:scheduler).
  const reportBooting = (e: Entry) => {
    const t = setTimeout(() => {
      if (e.phase === 'booting' && !e.lease && !e.leased && !e.result && !e.stopReason) opts.send({ type: 'job.phase', jobId: e.jobId, attempt: e.attempt, phase: 'booting' });
    }, BOOT_REPORT_MS);
    t.unref();
  };
  const askToStart = (e: Entry, info?: VmStartInfo): Promise<void> =>
    new Promise<void>((granted, refuse) => {
      const refused = (reason: string) => refuse(new Error(reason));
      if (e.stopReason) return refused(e.stopReason);
      e.lease = {
        granted: () => {
          e.lease = undefined;
          e.leased = true;
          granted();
        },
        refused: (reason) => {
          e.lease = undefined;
          refused(reason);
        },
      };
      e.startInfo = info;
      opts.send(startMsg(e));
    });

  const finish = (e: Entry, r: JobResultMsg) => {
    flushEntry(e);
    const result = { ...r, logChunks: e.seq };
    e.result = result;
    e.vm = undefined;
    opts.log.child({ jobId: e.jobId }).info({ outcome: result.outcome, exitCode: result.exitCode }, 'job finished');
    opts.send({ type: 'job.done', result });
    opts.events?.finished?.(result);
  };

  return {
    launch(jobId, attempt, spec) {
      const existing = jobs.get(jobId);
      if (existing && existing.attempt === attempt) return; // a repeated launch is harmless
      const mask = makeSecretMasker((spec.secretEnv ?? []).flatMap((k) => (spec.env[k] !== undefined ? [spec.env[k]] : [])));
      const e: Entry = { jobId, attempt, phase: 'booting', seq: 0, ...(mask ? { mask } : {}) };
      jobs.set(jobId, e);
      const jlog = opts.log.child({ jobId, attempt });
      void (async () => {
        let lease: CacheLease | undefined;
        try {
          const image = await opts.images(spec.image, spec.arch);
          if (e.stopReason) throw Object.assign(new Error(e.stopReason), { stopped: true });
          let fetched: CacheFetchMsg | undefined;
          if (spec.cache && opts.caches && opts.fetchCache) {
            // A peer's newer version first, bounded in time; whatever happens, the job starts on what the host has.
            const stopFetch = new AbortController();
            e.stopFetch = () => stopFetch.abort();
            fetched = await opts.fetchCache(jobId, attempt, spec.cache.key, stopFetch.signal, spec.cache.sizeBytes);
            e.stopFetch = undefined;
            if (fetched.outcome === 'fetched') jlog.info({ cache: spec.cache.key, version: fetched.version, from: fetched.from, bytes: fetched.bytes, seconds: fetched.seconds }, 'cache fetched from a peer host');
            else if (fetched.outcome !== 'none') {
              const have = opts.caches.inspect(spec.cache.key)?.current?.id;
              jlog.warn({ cache: spec.cache.key, outcome: fetched.outcome, why: fetched.reason }, 'cache fetch from a peer host failed');
              output(e, 'stderr', Buffer.from(`kiln: could not fetch cache version ${fetched.version ?? '?'}${fetched.from ? ` from host ${fetched.from}` : ''} (${fetched.outcome}: ${fetched.reason ?? 'no reason given'}); the job starts on ${have ? `this host's older version ${have}` : 'an empty cache'}\n`));
            }
            if (e.stopReason) throw Object.assign(new Error(e.stopReason), { stopped: true });
          }
          if (spec.cache && opts.caches) lease = await openJobCache(opts.caches, spec.cache, `${jobId}.${attempt}`);
          else if (spec.cache) output(e, 'stderr', Buffer.from(`kiln: this host keeps no caches; the job runs without /cache\n`));
          // A job with a cache restores from a snapshot with a cache slot of its size: a shape of its own.
          opts.noteUse?.({ image: spec.image, arch: spec.arch, cpus: spec.cpus, memoryBytes: spec.memoryBytes, diskBytes: spec.diskBytes, ...(lease ? { cacheBytes: lease.sizeBytes } : {}) });
          const vm = await opts.driver.start(
            {
              id: `job-${jobId}-${attempt}`,
              arch: spec.arch,
              cpus: spec.cpus,
              memoryBytes: spec.memoryBytes,
              diskBytes: spec.diskBytes,
              image,
              job: { command: spec.command, env: spec.env, ...(spec.cwd !== undefined ? { cwd: spec.cwd } : {}) },
              timeoutMs: spec.timeoutMs,
              network: spec.network,
              // the server's allowlists for this job (its tenant's, its repository's), on top of the host's own
              ...(spec.egressAllow && spec.egressAllow.length > 0 ? { egress: { allow: spec.egressAllow } } : {}),
              ...(opts.vm?.forwards ? { forwards: opts.vm.forwards } : {}),
              ...(opts.vm?.registryMirror ? { registryMirror: opts.vm.registryMirror } : {}),
              ...(opts.vm?.registryMirrors?.length ? { registryMirrors: opts.vm.registryMirrors } : {}),
              ...(lease ? { cacheDisk: lease.overlayPath, cacheBytes: lease.sizeBytes } : {}),
            },
            // The guest coming up is reported as it happens (before `e.vm` is set, notePhase below sees it).
            { stdout: (c) => output(e, 'stdout', c), stderr: (c) => output(e, 'stderr', c), mayStart: (info) => askToStart(e, info), running: () => notePhase(e) },
          );
          e.vm = vm;
          jlog.info({ vm: vm.id }, 'VM launched');
          reportBooting(e);
          opts.events?.launched?.(jobId, attempt);
          notePhase(e);
          if (e.stopReason) void vm.kill(e.stopReason);
          const r = await vm.done;
          let cache: JobCacheOutcome | undefined;
          if (lease && spec.cache && opts.caches) {
            const l = lease;
            lease = undefined;
            cache = await finishJobCache(opts.caches, l, spec.cache, r, {
              jobId: String(jobId),
              ...(spec.cache.ref ? { ref: spec.cache.ref } : {}),
              ...(spec.cache.commit ? { commit: spec.cache.commit } : {}),
              ...(spec.cache.by ? { by: spec.cache.by } : {}),
            }, () => askCache(jobId, attempt));
            if (fetched) cache.fetch = fetched;
            if (cache.committed) jlog.info({ cache: cache.key, version: cache.committed.id, bytes: cache.committed.bytes }, 'cache committed');
            else if (cache.notSaved && spec.cache.write) jlog.info({ cache: cache.key, why: cache.notSaved }, 'cache not saved');
          }
          finish(e, { ...resultOf(jobId, attempt, r), ...(cache ? { cache: cacheOutcomeMsg(cache) } : {}) });
        } catch (err) {
          lease?.release();
          if ((err as { stopped?: boolean }).stopped) {
            finish(e, { jobId, attempt, outcome: 'killed', message: e.stopReason ?? 'stopped' });
            return;
          }
          const k = toKilnError(err, 'vm.launch_failed');
          jlog.warn({ code: k.code, msg: k.message }, 'could not launch the VM');
          finish(e, { jobId, attempt, outcome: 'launch_failed', code: k.code, message: `${k.message}${k.hint ? ` (${k.hint})` : ''}`.slice(0, 4000) });
        }
      })();
    },
    stop(jobId, attempt, reason) {
      const e = jobs.get(jobId);
      if (!e || e.attempt !== attempt || e.result) return;
      e.stopReason = reason;
      e.lease?.refused(reason);
      e.stopFetch?.();
      if (e.vm) void e.vm.kill(reason);
    },
    startAnswer(jobId, attempt, ok, reason) {
      const e = jobs.get(jobId);
      if (!e || e.attempt !== attempt || !e.lease) return;
      if (ok) e.lease.granted();
      else e.lease.refused(reason ?? 'the server refused the start');
    },
    cacheAnswer(jobId, attempt, a) {
      const q = cacheAsks.get(jobId);
      if (q && q.attempt === attempt) q.answer(a);
    },
    pendingCacheAsks() {
      return [...cacheAsks].map(([jobId, q]) => ({ type: 'cache.ask', jobId, attempt: q.attempt }) as const);
    },
    pendingStarts() {
      return [...jobs.values()].filter((e) => e.lease).map(startMsg);
    },
    ack(jobId, attempt) {
      const e = jobs.get(jobId);
      if (e && e.attempt === attempt && e.result) jobs.delete(jobId);
    },
    running() {
      return [...jobs.values()].map((e) => ({ jobId: e.jobId, attempt: e.attempt, phase: e.result ? 'running' : e.phase }));
    },
    unacked() {
      return [...jobs.values()].flatMap((e) => (e.result ? [e.result] : []));
    },
    async stopAll(reason) {
      for (const q of cacheAsks.values()) q.answer({ write: false, reason });
      const waits: Promise<unknown>[] = [];
      for (const e of jobs.values()) {
        e.stopReason = reason;
        e.lease?.refused(reason);
        e.stopFetch?.();
        if (e.vm) waits.push(e.vm.kill(reason), e.vm.done);
      }
      await Promise.all(waits);
      if (timer) clearTimeout(timer);
      flushAll();
    },
    size: () => jobs.size,
  };
}
