/**
 * Warm cache disks (docs/caches.md): a named cache is a series of ext4 disk images kept under the data
 * directory; each job that asks for the cache gets a qcow2 copy-on-write overlay of the newest committed
 * version, and a trusted job's overlay may be committed as the next version.
 *
 * Layout, one directory per cache (`<data>/caches/<sha256(key)[0..16]>/`, 0700):
 *   cache.json          { key, sizeBytes, createdAt } (written once, at the first use)
 *   current             the newest committed version's id: the pointer, replaced by rename (tmp + fsync + rename)
 *   used                its mtime is the cache's last use (LRU eviction)
 *   versions/<v>.raw    committed ext4 images, read-only (0444); <v>.json beside each: job, ref, commit, time
 *   leases/<l>/         one per job using the cache: owner.json (pid, start time, the version read, the
 *                       version being committed), base.raw (a hard link to the version read, so the version's
 *                       data lives while the job does whatever the collector deletes), overlay.qcow2, new.raw
 *
 * Commit (last-committed-wins, atomic): the overlay is flattened onto a new raw image inside the lease
 * (qemu-img convert), checked (e2fsck -fp), fsynced, renamed into versions/, its record written and fsynced,
 * and only then the pointer replaced. A crash before the pointer's rename leaves the previous version
 * current; the half-made files are collected later. Old versions go once no live lease names them.
 * No lock is taken: every step is a rename or a link, and the pointer's last rename wins.
 */
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import {
  chmodSync,
  closeSync,
  existsSync,
  ftruncateSync,
  fsyncSync,
  linkSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  utimesSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { open as openFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { KilnError } from '../core/errors.ts';
import { formatSize } from '../core/sizes.ts';
import { checkDiskSpace, ensureExt4Base } from './disks.ts';
import { currentOwner, ownerAlive, type Owner } from './process.ts';
import { writeQcow2Overlay } from './qcow2.ts';

const GiB = 1024 * 1024 * 1024;
export const DEFAULT_CACHE_SIZE = 4 * GiB;
export const DEFAULT_CACHE_BUDGET = 20 * GiB;
export const MIN_CACHE_SIZE = 16 * 1024 * 1024;

/** Who wrote a version: recorded with it and shown by `kiln caches inspect`. */
export interface CacheWriter {
  jobId?: string;
  ref?: string;
  commit?: string;
  /** Free text: `kiln run` on this host, a GitHub repository, the API's token name. */
  by?: string;
}

export interface CacheVersion extends CacheWriter {
  id: string;
  createdAt: string;
  /** Bytes the image takes on disk (allocated blocks). */
  bytes: number;
  /** Seconds the commit took (flatten, check, sync, rename). */
  commitSeconds?: number;
  /** The image's checksum (`imageDigest`), recorded at commit; a copy fetched from a peer must match it. */
  sha256?: string;
  /** Set on a version fetched from a peer host: that host's name (the record is otherwise the writer's). */
  fetchedFrom?: string;
}

export interface CacheInfo {
  key: string;
  id: string;
  /** The ext4 file system's size: what a job can write into /cache. */
  sizeBytes: number;
  current?: CacheVersion;
  versions: CacheVersion[];
  /** Allocated bytes of every version and live overlay. */
  bytes: number;
  lastUsedAt: string;
  /** Live leases: jobs using the cache now. */
  inUse: number;
}

export interface CacheLease {
  key: string;
  /** The copy-on-write overlay to attach to the VM (VmSpec.cacheDisk). */
  overlayPath: string;
  /** The version this job reads; undefined: the cache had none (an empty file system). */
  version?: string;
  /** Whether the job starts from a committed version (a hit) or an empty cache (a miss). */
  hit: boolean;
  /** The file system's size (the overlay's virtual size): a warm start restores into a cache slot of this size. */
  sizeBytes: number;
  /** Commits the overlay as the cache's newest version. Call only after the guest unmounted /cache cleanly. */
  commit(writer: CacheWriter): Promise<CacheVersion>;
  /** Drops the overlay and the lease (idempotent). */
  release(): void;
}

export interface CacheCounters {
  hits: number;
  misses: number;
  commits: number;
  commitFailures: number;
  commitSecondsTotal: number;
  committedBytes: number;
  evictions: number;
}

export interface CacheStoreOptions {
  /** Host budget in allocated bytes over all caches; the least recently used caches not in use go beyond it. */
  budgetBytes?: number;
  /** Retention: a cache not used for this long (and not in use) goes at the next collection, within budget or not. */
  maxIdleMs?: number;
  logger?: Logger;
  /**
   * Test-only (KILN_TEST_HOLD_CACHE_COMMIT): awaited after the new version is on disk and before the pointer
   * is renamed, so a test can kill the process at the one moment that matters.
   */
  beforePointer?: (key: string, version: string) => Promise<void>;
}

export interface CacheStore {
  readonly dir: string;
  readonly counters: CacheCounters;
  /** A lease on the newest version of `key` (made, empty, at the first use with `sizeBytes`). */
  open(key: string, o: { sizeBytes?: number; jobId: string }): Promise<CacheLease>;
  list(): CacheInfo[];
  inspect(key: string): CacheInfo | undefined;
  /** Removes a cache; jobs using it keep their copy until they end. False if there is none. */
  remove(key: string): boolean;
  /** Old versions and dead leases collected; then caches idle past the retention, then LRU eviction within the budget. Returns the evicted keys. */
  collect(): string[];
  /** A committed version held for reading (sending it to a peer): kept while held, whatever the collector does. */
  holdVersion(key: string, version: string): HeldVersion | undefined;
  /**
   * Receives `version` of `key` from a peer: written into a lease of its own, and only once whole and matching
   * `sha256` renamed into the store (and made current if it is newer than the current one).
   */
  receiveVersion(key: string, o: { version: string; length: number; sha256: string; record: CacheWriter & { createdAt: string }; from: string }): VersionReceiver;
}

export interface HeldVersion {
  path: string;
  /** The image's size in bytes (the file system's size). */
  length: number;
  record: CacheVersion;
  release(): void;
}

export interface VersionReceiver {
  /** Writes one non-zero block (offsets strictly increasing, multiples of IMAGE_BLOCK_BYTES). */
  write(offset: number, data: Buffer): Promise<void>;
  /** Checks the checksum, syncs and renames the version into the store. Throws `cache.checksum` on a mismatch. */
  finish(): Promise<CacheVersion>;
  /** Drops what was received (idempotent). */
  abort(): void;
  readonly bytes: number;
}

/** The unit of a cache image's checksum and of a transfer's chunks (MAX_CACHE_CHUNK_BYTES in the protocol). */
export const IMAGE_BLOCK_BYTES = 512 * 1024;
const DIGEST_TAG = 'kiln-cache-image-v1\n';

function u64(n: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(n));
  return b;
}

const ZERO_BLOCK = Buffer.alloc(IMAGE_BLOCK_BYTES);
export const isZeroBlock = (b: Buffer): boolean => b.equals(b.length === IMAGE_BLOCK_BYTES ? ZERO_BLOCK : ZERO_BLOCK.subarray(0, b.length));

/**
 * An image's checksum, taken over what it holds rather than how the file is laid out: sha256 over a tag, then
 * for each non-zero IMAGE_BLOCK_BYTES block in order its offset (8 bytes, big-endian) and its bytes, then the
 * image's length. Holes and zero blocks are skipped, so the sparse copy a peer receives sums the same.
 */
export function makeImageDigest(): { block(offset: number, data: Buffer): void; digest(length: number): string } {
  const h = createHash('sha256').update(DIGEST_TAG);
  return {
    block(offset, data) {
      if (isZeroBlock(data)) return;
      h.update(u64(offset)).update(data);
    },
    digest: (length) => h.update(u64(length)).digest('hex'),
  };
}

/** The byte ranges of a raw image that may hold data (`qemu-img map`: the file's holes are skipped); the whole file if that fails. */
export async function dataRanges(path: string, length: number): Promise<{ start: number; length: number }[]> {
  try {
    const { output } = await run('qemu-img', ['map', '--output=json', '-f', 'raw', path]);
    const m = JSON.parse(output.slice(output.indexOf('['))) as { start: number; length: number; data: boolean }[];
    return m.filter((x) => x.data).map((x) => ({ start: x.start, length: x.length }));
  } catch {
    return [{ start: 0, length }];
  }
}

/** The image's non-zero IMAGE_BLOCK_BYTES blocks, in order (the last one may be shorter). */
export async function* nonZeroBlocks(path: string): AsyncGenerator<{ offset: number; data: Buffer }> {
  const length = statSync(path).size;
  const ranges = await dataRanges(path, length);
  const fh = await openFile(path, 'r');
  try {
    let next = 0;
    for (const r of ranges) {
      for (let off = Math.max(next, Math.floor(r.start / IMAGE_BLOCK_BYTES) * IMAGE_BLOCK_BYTES); off < r.start + r.length && off < length; off += IMAGE_BLOCK_BYTES) {
        const n = Math.min(IMAGE_BLOCK_BYTES, length - off);
        const data = Buffer.allocUnsafe(n);
        let got = 0;
        while (got < n) {
          const { bytesRead } = await fh.read(data, got, n - got, off + got);
          if (bytesRead === 0) break;
          got += bytesRead;
        }
        next = off + IMAGE_BLOCK_BYTES;
        const b = got === n ? data : data.subarray(0, got);
        if (!isZeroBlock(b)) yield { offset: off, data: b };
      }
    }
  } finally {
    await fh.close();
  }
}

export async function imageDigest(path: string): Promise<string> {
  const d = makeImageDigest();
  for await (const b of nonZeroBlocks(path)) d.block(b.offset, b.data);
  return d.digest(statSync(path).size);
}

export function validateCacheKey(key: string): void {
  if (!/^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$/.test(key) || key.includes('..')) {
    throw new KilnError('input.bad_cache_key', `cache key "${key.slice(0, 80)}" is not valid`, {
      hint: 'use 1-200 letters, digits and . _ / -, starting with a letter or digit (e.g. owner/repo or deps-v1)',
    });
  }
}

export function cacheId(key: string): string {
  return createHash('sha256').update(key).digest('hex').slice(0, 16);
}

interface LeaseRecord extends Owner {
  reads?: string;
  committing?: string;
  /** A fetch from a peer: the announced size of the version it writes, counted against the budget until it ends. */
  receiving?: number;
  jobId: string;
}

function allocated(path: string): number {
  try {
    return statSync(path).blocks * 512;
  } catch {
    return 0;
  }
}

function readJson<T>(path: string): T | undefined {
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as T;
  } catch {
    return undefined;
  }
}

/** Writes a small file whole or not at all: a temporary beside it, fsync, rename, fsync of the directory. */
function writeAtomic(path: string, text: string, mode = 0o600): void {
  const tmp = `${path}.${process.pid}.${randomBytes(3).toString('hex')}.tmp`;
  const fd = openSync(tmp, 'wx', mode);
  try {
    writeFileSync(fd, text);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, path);
  syncDir(join(path, '..'));
}

function syncDir(dir: string): void {
  const fd = openSync(dir, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

function fsyncFile(path: string): void {
  const fd = openSync(path, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

function run(cmd: string, args: string[], okCodes: number[] = [0]): Promise<{ code: number; output: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { PATH: `${process.env.PATH ?? ''}:/usr/sbin:/sbin` } });
    let output = '';
    p.stdout.on('data', (d: Buffer) => (output += d.toString()));
    p.stderr.on('data', (d: Buffer) => (output += d.toString()));
    p.on('error', (e: NodeJS.ErrnoException) =>
      reject(e.code === 'ENOENT' ? new KilnError('host.missing_command', `\`${cmd}\` is not installed`, { hint: 'install qemu-utils and e2fsprogs (or run `kiln setup`)' }) : e),
    );
    p.on('close', (code) => (okCodes.includes(code ?? -1) ? resolve({ code: code ?? -1, output }) : reject(new KilnError('cache.commit_failed', `${cmd} failed (exit ${code}): ${output.trim().slice(-500)}`, { kind: 'internal' }))));
  });
}

export function makeCacheStore(dataDir: string, opts: CacheStoreOptions = {}): CacheStore {
  const dir = join(dataDir, 'caches');
  const emptyDir = join(dataDir, 'cache', 'disks');
  const budget = opts.budgetBytes ?? DEFAULT_CACHE_BUDGET;
  const counters: CacheCounters = { hits: 0, misses: 0, commits: 0, commitFailures: 0, commitSecondsTotal: 0, committedBytes: 0, evictions: 0 };
  const log = opts.logger;

  const cacheDir = (key: string) => join(dir, cacheId(key));
  const current = (cdir: string): string | undefined => {
    try {
      const v = readFileSync(join(cdir, 'current'), 'utf8').trim();
      return /^[A-Za-z0-9-]+$/.test(v) ? v : undefined;
    } catch {
      return undefined;
    }
  };
  const leases = (cdir: string): { id: string; rec: LeaseRecord | undefined; alive: boolean }[] => {
    let names: string[] = [];
    try {
      names = readdirSync(join(cdir, 'leases'));
    } catch {
      return [];
    }
    return names.map((id) => {
      const rec = readJson<LeaseRecord>(join(cdir, 'leases', id, 'owner.json'));
      return { id, rec, alive: rec !== undefined && ownerAlive(rec) };
    });
  };

  /** Deletes versions that are neither current nor named by a live lease, and leases of dead processes. */
  const collectCache = (cdir: string) => {
    // Listed first: a version file that appears later belongs to a commit whose lease already names it.
    let files: string[] = [];
    try {
      files = readdirSync(join(cdir, 'versions'));
    } catch {
      /* none yet */
    }
    const cur = current(cdir);
    const ls = leases(cdir);
    const keep = new Set<string>([...(cur ? [cur] : [])]);
    for (const l of ls) {
      if (!l.alive) {
        // An owner.json is written first: a lease directory without one younger than a minute may be starting.
        const p = join(cdir, 'leases', l.id);
        const age = Date.now() - (statSync(p, { throwIfNoEntry: false })?.mtimeMs ?? 0);
        if (l.rec || age > 60_000) rmSync(p, { recursive: true, force: true });
        continue;
      }
      if (l.rec?.reads) keep.add(l.rec.reads);
      if (l.rec?.committing) keep.add(l.rec.committing);
    }
    for (const f of files) {
      const v = f.replace(/\.(raw|json)$/, '');
      if (!keep.has(v)) rmSync(join(cdir, 'versions', f), { force: true });
    }
  };

  const info = (cdir: string): CacheInfo | undefined => {
    const meta = readJson<{ key: string; sizeBytes: number }>(join(cdir, 'cache.json'));
    if (!meta) return undefined;
    const cur = current(cdir);
    let versions: CacheVersion[] = [];
    try {
      versions = readdirSync(join(cdir, 'versions'))
        .filter((f) => f.endsWith('.json'))
        .flatMap((f) => {
          const v = readJson<CacheVersion>(join(cdir, 'versions', f));
          return v ? [{ ...v, bytes: allocated(join(cdir, 'versions', `${v.id}.raw`)) }] : [];
        })
        .sort((a, b) => a.createdAt.localeCompare(b.createdAt));
    } catch {
      /* none yet */
    }
    const ls = leases(cdir).filter((l) => l.alive);
    let bytes = versions.reduce((n, v) => n + v.bytes, 0);
    for (const l of ls) bytes += allocated(join(cdir, 'leases', l.id, 'overlay.qcow2')) + allocated(join(cdir, 'leases', l.id, 'new.raw')) + (l.rec?.receiving ?? 0);
    let lastUsedAt = new Date(0).toISOString();
    try {
      lastUsedAt = statSync(join(cdir, 'used')).mtime.toISOString();
    } catch {
      /* never used */
    }
    const c = versions.find((v) => v.id === cur);
    return { key: meta.key, id: cdir.slice(cdir.lastIndexOf('/') + 1), sizeBytes: meta.sizeBytes, ...(c ? { current: c } : {}), versions, bytes, lastUsedAt, inUse: ls.length };
  };

  const allInfo = (): CacheInfo[] => {
    let names: string[] = [];
    try {
      names = readdirSync(dir).filter((n) => /^[0-9a-f]{16}$/.test(n));
    } catch {
      return [];
    }
    return names.flatMap((n) => info(join(dir, n)) ?? []);
  };

  const removeDir = (cdir: string) => {
    // Renamed away first, so a concurrent open never sees half a cache; its leases' hard links keep their data.
    const trash = join(dir, `.trash-${process.pid}-${randomBytes(4).toString('hex')}`);
    try {
      renameSync(cdir, trash);
    } catch {
      return;
    }
    rmSync(trash, { recursive: true, force: true });
  };

  const collect = (): string[] => {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    for (const n of readdirSync(dir)) {
      if (n.startsWith('.trash-')) rmSync(join(dir, n), { recursive: true, force: true });
      else if (/^[0-9a-f]{16}$/.test(n)) collectCache(join(dir, n));
    }
    let caches = allInfo().sort((a, b) => a.lastUsedAt.localeCompare(b.lastUsedAt));
    const evicted: string[] = [];
    if (opts.maxIdleMs !== undefined) {
      const before = new Date(Date.now() - opts.maxIdleMs).toISOString();
      for (const c of caches) {
        // Never used yet (made or received just now, its first lease still to come): not aged.
        if (c.lastUsedAt >= before || c.inUse > 0 || !existsSync(join(dir, c.id, 'used'))) continue;
        removeDir(join(dir, c.id));
        evicted.push(c.key);
        counters.evictions++;
        log?.info({ cache: c.key, bytes: c.bytes, lastUsedAt: c.lastUsedAt, maxIdleMs: opts.maxIdleMs }, 'cache evicted (unused longer than the retention)');
      }
      caches = caches.filter((c) => !evicted.includes(c.key));
    }
    let total = caches.reduce((n, c) => n + c.bytes, 0);
    for (const c of caches) {
      if (total <= budget) break;
      if (c.inUse > 0) continue;
      removeDir(join(dir, c.id));
      total -= c.bytes;
      evicted.push(c.key);
      counters.evictions++;
      log?.info({ cache: c.key, bytes: c.bytes, budget }, 'cache evicted (least recently used, over the host budget)');
    }
    if (total > budget) log?.warn({ total, budget }, 'caches in use exceed the host budget');
    return evicted;
  };

  /**
   * Room in the budget for `bytes` more of cache `key` (a version about to be fetched): the least recently used
   * caches not in use (and not `key`) are evicted first, as the collector would; refused if that is not enough.
   * `key`'s own versions count only while a job uses them: once the fetched one is current, the collector drops
   * the older ones (counting them refused any version over half the budget, every time).
   */
  const makeRoom = (key: string, bytes: number, what: string) => {
    const caches = allInfo().sort((a, b) => a.lastUsedAt.localeCompare(b.lastUsedAt));
    let total = caches.reduce((n, c) => n + (c.key === key && c.inUse === 0 ? 0 : c.bytes), 0) + bytes;
    for (const c of caches) {
      if (total <= budget) break;
      if (c.inUse > 0 || c.key === key) continue;
      removeDir(join(dir, c.id));
      total -= c.bytes;
      counters.evictions++;
      log?.info({ cache: c.key, bytes: c.bytes, budget, for: key }, `cache evicted (least recently used) to make room for ${what}`);
    }
    if (total > budget) {
      throw new KilnError('cache.over_budget', `${what} (${formatSize(bytes)}) does not fit this host's cache budget of ${formatSize(budget)} beside the caches in use here (${formatSize(total - bytes)})`, {
        hint: 'raise KILN_CACHE_BUDGET on this host, or use a smaller cache',
      });
    }
  };

  async function open(key: string, o: { sizeBytes?: number; jobId: string }): Promise<CacheLease> {
    validateCacheKey(key);
    const cdir = cacheDir(key);
    mkdirSync(join(cdir, 'versions'), { recursive: true, mode: 0o700 });
    mkdirSync(join(cdir, 'leases'), { recursive: true, mode: 0o700 });
    let meta = readJson<{ key: string; sizeBytes: number }>(join(cdir, 'cache.json'));
    if (!meta) {
      const sizeBytes = o.sizeBytes ?? DEFAULT_CACHE_SIZE;
      if (!Number.isInteger(sizeBytes) || sizeBytes < MIN_CACHE_SIZE) {
        throw new KilnError('input.bad_cache_size', `a cache of ${formatSize(sizeBytes)} is too small`, { hint: 'ask for at least 16M' });
      }
      writeAtomic(join(cdir, 'cache.json'), JSON.stringify({ key, sizeBytes, createdAt: new Date().toISOString() }));
      meta = { key, sizeBytes };
    }
    if (meta.key !== key) throw new KilnError('cache.key_collision', `cache ${cdir} belongs to key "${meta.key}", not "${key}"`, { kind: 'internal' });
    // The overlay can grow to the whole file system: that room must exist on the host, or the job never starts.
    checkDiskSpace(dataDir, meta.sizeBytes);
    const leaseId = `${process.pid}-${randomBytes(6).toString('hex')}`;
    const ldir = join(cdir, 'leases', leaseId);
    mkdirSync(ldir, { mode: 0o700 });
    const rec: LeaseRecord = { ...currentOwner(), jobId: o.jobId };
    const writeRec = () => writeFileSync(join(ldir, 'owner.json'), JSON.stringify(rec), { mode: 0o600 });
    writeRec();
    const base = join(ldir, 'base.raw');
    let version: string | undefined;
    try {
      // The version named by the pointer, hard-linked into the lease; if a collector removed it in between, read the pointer again.
      for (let i = 0; i < 5 && version === undefined; i++) {
        const v = current(cdir);
        if (!v) break;
        rec.reads = v;
        writeRec();
        try {
          linkSync(join(cdir, 'versions', `${v}.raw`), base);
          version = v;
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
        }
      }
      if (version === undefined) {
        delete rec.reads;
        writeRec();
        linkSync(await ensureExt4Base(emptyDir, meta.sizeBytes, 'kiln-cache', 'cache', { journal: false }), base);
      }
      // A version's own size (a fetched one may differ from what the cache was first made with), else the cache's.
      writeQcow2Overlay(join(ldir, 'overlay.qcow2'), base, 'raw', version !== undefined ? statSync(base).size : meta.sizeBytes);
    } catch (e) {
      rmSync(ldir, { recursive: true, force: true });
      throw e;
    }
    const now = new Date();
    try {
      utimesSync(join(cdir, 'used'), now, now);
    } catch {
      writeFileSync(join(cdir, 'used'), '');
    }
    if (version) counters.hits++;
    else counters.misses++;
    let released = false;
    const sizeBytes = meta.sizeBytes;
    return {
      key,
      overlayPath: join(ldir, 'overlay.qcow2'),
      ...(version ? { version } : {}),
      hit: version !== undefined,
      sizeBytes,
      async commit(writer) {
        if (released) throw new KilnError('cache.commit_failed', 'the lease was released before the commit', { kind: 'internal' });
        const t0 = performance.now();
        const id = `${Date.now().toString(36).padStart(9, '0')}-${randomBytes(4).toString('hex')}`;
        const tmp = join(ldir, 'new.raw');
        try {
          rec.committing = id;
          writeRec();
          checkDiskSpace(dataDir, sizeBytes);
          await run('qemu-img', ['convert', '-q', '-f', 'qcow2', '-O', 'raw', join(ldir, 'overlay.qcow2'), tmp]);
          // 0: clean, 1: errors fixed. Anything else: the file system is not whole and is not committed.
          const fsck = await run('e2fsck', ['-f', '-p', tmp], [0, 1, 2, 4, 8, 12]);
          if (fsck.code >= 4) throw new KilnError('cache.commit_failed', `the cache's file system is damaged (e2fsck exit ${fsck.code}); not committed`, { kind: 'internal' });
          fsyncFile(tmp);
          const bytes = allocated(tmp);
          const sha256 = await imageDigest(tmp);
          const v: CacheVersion = { id, createdAt: new Date().toISOString(), bytes, ...writer, sha256 };
          const vraw = join(cdir, 'versions', `${id}.raw`);
          renameSync(tmp, vraw);
          writeAtomic(join(cdir, 'versions', `${id}.json`), JSON.stringify(v));
          syncDir(join(cdir, 'versions'));
          await opts.beforePointer?.(key, id);
          writeAtomic(join(cdir, 'current'), `${id}\n`);
          v.commitSeconds = (performance.now() - t0) / 1000;
          counters.commits++;
          counters.commitSecondsTotal += v.commitSeconds;
          counters.committedBytes += bytes;
          log?.info({ cache: key, version: id, bytes, seconds: v.commitSeconds }, 'cache committed');
          return v;
        } catch (e) {
          counters.commitFailures++;
          rmSync(tmp, { force: true });
          throw e;
        }
      },
      release() {
        if (released) return;
        released = true;
        rmSync(ldir, { recursive: true, force: true });
        try {
          collectCache(cdir);
        } catch (e) {
          log?.warn({ cache: key, err: (e as Error).message }, 'cache collection failed');
        }
      },
    };
  }

  const leaseDir = (cdir: string, rec: LeaseRecord): { ldir: string; writeRec(): void } => {
    mkdirSync(join(cdir, 'leases'), { recursive: true, mode: 0o700 });
    const ldir = join(cdir, 'leases', `${process.pid}-${randomBytes(6).toString('hex')}`);
    mkdirSync(ldir, { mode: 0o700 });
    const writeRec = () => writeFileSync(join(ldir, 'owner.json'), JSON.stringify(rec), { mode: 0o600 });
    writeRec();
    return { ldir, writeRec };
  };

  function holdVersion(key: string, version: string): HeldVersion | undefined {
    validateCacheKey(key);
    if (!/^[A-Za-z0-9-]+$/.test(version)) return undefined;
    const cdir = cacheDir(key);
    const record = readJson<CacheVersion>(join(cdir, 'versions', `${version}.json`));
    if (!record || readJson<{ key: string }>(join(cdir, 'cache.json'))?.key !== key) return undefined;
    const { ldir } = leaseDir(cdir, { ...currentOwner(), jobId: `send-${version}`, reads: version });
    const path = join(ldir, 'base.raw');
    try {
      linkSync(join(cdir, 'versions', `${version}.raw`), path);
    } catch {
      rmSync(ldir, { recursive: true, force: true });
      return undefined;
    }
    let released = false;
    return {
      path,
      length: statSync(path).size,
      record,
      release() {
        if (released) return;
        released = true;
        rmSync(ldir, { recursive: true, force: true });
      },
    };
  }

  function receiveVersion(key: string, o: { version: string; length: number; sha256: string; record: CacheWriter & { createdAt: string }; from: string }): VersionReceiver {
    validateCacheKey(key);
    if (!/^[A-Za-z0-9-]+$/.test(o.version)) throw new KilnError('cache.transfer_failed', `"${o.version.slice(0, 40)}" is not a version id`);
    const cdir = cacheDir(key);
    mkdirSync(join(cdir, 'versions'), { recursive: true, mode: 0o700 });
    const meta = readJson<{ key: string; sizeBytes: number }>(join(cdir, 'cache.json'));
    if (meta && meta.key !== key) throw new KilnError('cache.key_collision', `cache ${cdir} belongs to key "${meta.key}", not "${key}"`, { kind: 'internal' });
    if (existsSync(join(cdir, 'versions', `${o.version}.raw`))) throw new KilnError('cache.transfer_failed', `version ${o.version} is already here`);
    // Its announced size counts against the budget from now on (the lease's `receiving`, in the same
    // synchronous run as the check, so a second fetch sees it): older caches are evicted first, or it is refused.
    // The disk's free space is checked after that eviction, which may be what makes room.
    makeRoom(key, o.length, `version ${o.version} of cache ${key}`);
    checkDiskSpace(dataDir, o.length);
    // A lease of its own, naming the version it makes: the collector keeps it while this process lives, and
    // removes it (with the half-received image) once it does not. Nothing is in versions/ until finish().
    const { ldir } = leaseDir(cdir, { ...currentOwner(), jobId: `fetch-${o.version}`, committing: o.version, receiving: o.length });
    const file = join(ldir, 'fetch.raw');
    let fd: number | undefined;
    try {
      fd = openSync(file, 'wx', 0o600);
      ftruncateSync(fd, o.length);
    } catch (e) {
      // Nothing received yet: the lease goes now, not when this process ends (a live lease keeps the cache from eviction).
      if (fd !== undefined) closeSync(fd);
      rmSync(ldir, { recursive: true, force: true });
      throw new KilnError('cache.transfer_failed', `could not make room for version ${o.version} (${formatSize(o.length)}) under ${ldir}: ${(e as Error).message}`, { cause: e });
    }
    const fdOpen: number = fd;
    let open = true;
    const closeFd = () => {
      if (open) closeSync(fdOpen);
      open = false;
    };
    const digest = makeImageDigest();
    let next = 0;
    let bytes = 0;
    let done = false;
    const fail = (why: string) => new KilnError('cache.transfer_failed', why);
    return {
      get bytes() {
        return bytes;
      },
      async write(offset, data) {
        if (done) throw fail('the transfer is over');
        if (offset % IMAGE_BLOCK_BYTES !== 0 || offset < next || offset >= o.length) throw fail(`a chunk at offset ${offset} is out of order or outside the image`);
        if (data.length !== Math.min(IMAGE_BLOCK_BYTES, o.length - offset)) throw fail(`a chunk at offset ${offset} has ${data.length} bytes, not a whole block`);
        digest.block(offset, data);
        let off = 0;
        while (off < data.length) off += writeSync(fdOpen, data, off, data.length - off, offset + off);
        next = offset + IMAGE_BLOCK_BYTES;
        bytes += data.length;
        await Promise.resolve();
      },
      async finish() {
        if (done) throw fail('the transfer is over');
        done = true;
        try {
          const sum = digest.digest(o.length);
          if (sum !== o.sha256) {
            throw new KilnError('cache.checksum', `the received copy of version ${o.version} does not match its recorded checksum (sha256 ${sum.slice(0, 12)}…, expected ${o.sha256.slice(0, 12)}…): not used`);
          }
          fsyncSync(fdOpen);
          closeFd();
          // The cache's size is its newest version's: a fetched version of another size (the cache was made with
          // another size elsewhere) redefines it here once it is current.
          const cur0 = current(cdir);
          const becomesCurrent = !cur0 || o.version > cur0;
          if (!meta || (becomesCurrent && meta.sizeBytes !== o.length)) {
            writeAtomic(join(cdir, 'cache.json'), JSON.stringify({ key, sizeBytes: o.length, createdAt: new Date().toISOString() }));
          }
          const vraw = join(cdir, 'versions', `${o.version}.raw`);
          chmodSync(file, 0o600);
          renameSync(file, vraw);
          const { createdAt, jobId, ref, commit, by } = o.record;
          const v: CacheVersion = { id: o.version, createdAt, bytes: allocated(vraw), ...(jobId ? { jobId } : {}), ...(ref ? { ref } : {}), ...(commit ? { commit } : {}), ...(by ? { by } : {}), sha256: o.sha256, fetchedFrom: o.from };
          writeAtomic(join(cdir, 'versions', `${o.version}.json`), JSON.stringify(v));
          syncDir(join(cdir, 'versions'));
          // Newer than what this host has: it becomes current (versions sort by their time-ordered ids).
          const cur = current(cdir);
          if (!cur || o.version > cur) writeAtomic(join(cdir, 'current'), `${o.version}\n`);
          // Fetched for a job about to use it: it counts as used now, or the next fetch's eviction (least recently
          // used first) would take it before that job opens it.
          const now = new Date();
          try {
            utimesSync(join(cdir, 'used'), now, now);
          } catch {
            writeFileSync(join(cdir, 'used'), '');
          }
          log?.info({ cache: key, version: o.version, bytes: v.bytes, from: o.from }, 'cache version fetched from a peer');
          return v;
        } finally {
          closeFd();
          rmSync(ldir, { recursive: true, force: true });
        }
      },
      abort() {
        done = true;
        closeFd();
        rmSync(ldir, { recursive: true, force: true });
      },
    };
  }

  return {
    dir,
    counters,
    holdVersion,
    receiveVersion,
    open,
    list: allInfo,
    inspect: (key) => (existsSync(cacheDir(key)) ? info(cacheDir(key)) : undefined),
    remove(key) {
      validateCacheKey(key);
      const cdir = cacheDir(key);
      if (!existsSync(join(cdir, 'cache.json'))) return false;
      removeDir(cdir);
      return true;
    },
    collect,
  };
}
