/**
 * The per-host store of warm-start snapshots (docs/ARCHITECTURE.md, "Warm starts"): one directory per
 * snapshot under <dataDir>/snapshots/<id>/, where <id> is a hash of everything a restore must match
 * (SnapshotKey). Each holds the template VM's RAM file (`ram`), its device state (`state`), its two disk
 * overlays (`scratch.qcow2`, `root.qcow2` for images with a root disk) and `meta.json`.
 *
 * Verify once, not per run: files are hashed when a snapshot enters the store (and by `kiln image verify`);
 * at restore time only cheap checks run (size, inode, mtime, ctime and mode of each file against the
 * record), so a damaged or replaced file is noticed without reading it.
 */
import { createHash } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, openSync, closeSync, readdirSync, readFileSync, renameSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Arch } from '../core/arch.ts';
import { KilnError } from '../core/errors.ts';
import { sha256File } from './files.ts';
import { currentOwner, ownerAlive, type Owner } from './process.ts';

/** Everything a restored VM must share with its template. Any change gives a different snapshot. */
export interface SnapshotKey {
  image: string;
  arch: Arch;
  cpus: number;
  memoryBytes: number;
  diskBytes: number;
  /** The guest's device set, as a stable list (see snapshotDevices). */
  devices: string;
  /** `qemu-system-* --version` first line. */
  qemu: string;
  /** The kiln-init protocol the host speaks to restored guests (WARM_INIT_VERSION). */
  init: number;
  accel: 'kvm' | 'tcg';
  /** Under KVM the host CPU model is part of the VM's state. */
  hostCpu?: string;
  /**
   * A cache slot: the cache disk's device, of this virtual size (the cache's file system size; the guest
   * probed that size in the template). Only VMs with a cache disk of exactly this size restore from it.
   */
  cacheBytes?: number;
}

export interface SnapshotFile {
  size: number;
  ino: number;
  mtimeMs: number;
  ctimeMs: number;
  mode: number;
  sha256: string;
}

export interface SnapshotRecord {
  id: string;
  key: SnapshotKey;
  created: string;
  /** Template boot and save, ms. */
  buildMs: number;
  /** Disk blocks used by the files (the RAM file is sparse). */
  bytes: number;
  files: Record<string, SnapshotFile>;
}

export const SNAPSHOT_FILES = ['ram', 'state', 'scratch.qcow2'] as const;

export interface SnapshotStore {
  readonly dir: string;
  idOf(key: SnapshotKey): string;
  list(): (SnapshotRecord & { lastUsedMs: number })[];
  /** The snapshot for `key` if its files pass the cheap checks; otherwise why not (and it is dropped if damaged). */
  find(key: SnapshotKey): { snap: SnapshotRecord; dir: string } | { missing: true } | { problem: string };
  /** Removes a snapshot (by id or id prefix). */
  remove(id: string): boolean;
  removeForImage(digest: string): string[];
  /** A private directory to build a snapshot in; `commit` moves it into the store. */
  staging(): string;
  commit(stagingDir: string, key: SnapshotKey, buildMs: number): Promise<SnapshotRecord>;
  /** Hashes every file of every snapshot again; damaged snapshots are removed. */
  verifyAll(): Promise<{ ok: string[]; removed: { id: string; why: string }[] }>;
  /** One builder per key across processes: a release function, or undefined if a live process is building it. */
  lockBuild(key: SnapshotKey): (() => void) | undefined;
  /** Removes staging directories and locks of dead processes. */
  sweep(): void;
  markUsed(id: string): void;
}

/** The store's disk budget unless KILN_SNAPSHOT_BUDGET says otherwise: 4 GiB of allocated blocks. */
export const DEFAULT_SNAPSHOT_BUDGET = 4 * 1024 ** 3;

export function makeSnapshotStore(dataDir: string, opts: { budgetBytes?: number } = {}): SnapshotStore {
  const dir = join(dataDir, 'snapshots');
  const budget = opts.budgetBytes ?? DEFAULT_SNAPSHOT_BUDGET;
  const ensureDir = () => mkdirSync(dir, { recursive: true, mode: 0o700 });
  const readRecord = (d: string): SnapshotRecord | undefined => {
    try {
      return JSON.parse(readFileSync(join(d, 'meta.json'), 'utf8')) as SnapshotRecord;
    } catch {
      return undefined;
    }
  };
  const lastUsed = (d: string) => {
    try {
      return statSync(join(d, 'used')).mtimeMs;
    } catch {
      return 0;
    }
  };
  const idOf = (key: SnapshotKey) => createHash('sha256').update(JSON.stringify(canonicalKey(key))).digest('hex').slice(0, 24);
  const list = () => {
    if (!existsSync(dir)) return [];
    const out: (SnapshotRecord & { lastUsedMs: number })[] = [];
    for (const e of readdirSync(dir)) {
      if (!/^[0-9a-f]{24}$/.test(e)) continue;
      const r = readRecord(join(dir, e));
      if (r) out.push({ ...r, lastUsedMs: lastUsed(join(dir, e)) });
    }
    return out.sort((a, b) => b.lastUsedMs - a.lastUsedMs);
  };
  const removeDir = (d: string) => {
    // Rename first, so a concurrent restore never sees half a snapshot.
    const gone = join(dir, `.gone-${process.pid}-${Math.random().toString(36).slice(2)}`);
    try {
      renameSync(d, gone);
    } catch {
      return;
    }
    rmSync(gone, { recursive: true, force: true });
  };
  const cheapProblem = (d: string, r: SnapshotRecord): string | undefined => {
    for (const [name, f] of Object.entries(r.files)) {
      let st;
      try {
        st = statSync(join(d, name));
      } catch {
        return `${name} is missing`;
      }
      if (st.size !== f.size) return `${name} changed size (${st.size} bytes, ${f.size} recorded)`;
      if (st.ino !== f.ino || st.mtimeMs !== f.mtimeMs || st.ctimeMs !== f.ctimeMs) return `${name} was modified or replaced after it was saved`;
      if ((st.mode & 0o7777) !== f.mode) return `${name} has mode ${(st.mode & 0o777).toString(8)}, not the sealed ${f.mode.toString(8)}`;
    }
    return undefined;
  };

  const store: SnapshotStore = {
    dir,
    idOf,
    list,
    find(key) {
      const id = idOf(key);
      const d = join(dir, id);
      if (!existsSync(d)) return { missing: true };
      const r = readRecord(d);
      const problem = !r ? 'its meta.json is missing or damaged' : JSON.stringify(canonicalKey(r.key)) !== JSON.stringify(canonicalKey(key)) ? 'its key does not match' : cheapProblem(d, r);
      if (problem || !r) {
        removeDir(d);
        return { problem: `snapshot ${id.slice(0, 12)}: ${problem}` };
      }
      return { snap: r, dir: d };
    },
    remove(id) {
      const matches = list().filter((s) => s.id.startsWith(id));
      if (matches.length > 1) throw new KilnError('snapshot.ambiguous', `snapshot id "${id}" matches ${matches.length} snapshots`, { hint: 'give more digits (see `kiln snapshots ls`)' });
      if (!matches[0]) return false;
      removeDir(join(dir, matches[0].id));
      return true;
    },
    removeForImage(digest) {
      const gone = list().filter((s) => s.key.image === digest);
      for (const s of gone) removeDir(join(dir, s.id));
      return gone.map((s) => s.id);
    },
    staging() {
      ensureDir();
      const p = join(dir, `.build-${process.pid}-${Math.random().toString(36).slice(2, 8)}`);
      mkdirSync(p, { mode: 0o700 });
      writeFileSync(join(p, 'owner.json'), JSON.stringify(currentOwner()));
      return p;
    },
    async commit(staging, key, buildMs) {
      rmSync(join(staging, 'owner.json'), { force: true });
      const names = readdirSync(staging).filter((n) => (SNAPSHOT_FILES as readonly string[]).includes(n) || n === 'root.qcow2');
      const files: Record<string, SnapshotFile> = {};
      let bytes = 0;
      for (const name of names) {
        const p = join(staging, name);
        // The RAM file stays writable by its owner: QEMU 7.2 opens it read-write even for a private mapping.
        chmodSync(p, name === 'ram' ? 0o600 : 0o400);
        const sha256 = await sha256File(p);
        const st = statSync(p);
        bytes += st.blocks * 512;
        files[name] = { size: st.size, ino: st.ino, mtimeMs: st.mtimeMs, ctimeMs: st.ctimeMs, mode: st.mode & 0o7777, sha256 };
      }
      const id = idOf(key);
      const record: SnapshotRecord = { id, key, created: new Date().toISOString(), buildMs: Math.round(buildMs), bytes, files };
      writeFileSync(join(staging, 'meta.json'), `${JSON.stringify(record, null, 2)}\n`, { mode: 0o600 });
      writeFileSync(join(staging, 'used'), '');
      const target = join(dir, id);
      if (existsSync(target)) removeDir(target);
      renameSync(staging, target);
      // Keep the store under its budget: least recently used first, never the one just made.
      let total = list().reduce((n, s) => n + s.bytes, 0);
      for (const s of list().reverse()) {
        if (total <= budget) break;
        if (s.id === id) continue;
        removeDir(join(dir, s.id));
        total -= s.bytes;
      }
      return record;
    },
    async verifyAll() {
      const ok: string[] = [];
      const removed: { id: string; why: string }[] = [];
      for (const s of list()) {
        const d = join(dir, s.id);
        let why = cheapProblem(d, s);
        for (const [name, f] of Object.entries(s.files)) {
          if (why) break;
          if ((await sha256File(join(d, name)).catch(() => '')) !== f.sha256) why = `${name} does not match its recorded hash`;
        }
        if (why) {
          removeDir(d);
          removed.push({ id: s.id, why });
        } else ok.push(s.id);
      }
      return { ok, removed };
    },
    lockBuild(key) {
      ensureDir();
      const lock = join(dir, `.lock-${idOf(key)}`);
      for (let attempt = 0; attempt < 2; attempt++) {
        try {
          closeSync(openSync(lock, 'wx', 0o600));
          writeFileSync(lock, JSON.stringify(currentOwner()));
          return () => rmSync(lock, { force: true });
        } catch {
          const owner = readJson<Owner>(lock);
          if (owner && ownerAlive(owner)) return undefined;
          if (!owner && Date.now() - (statSync(lock, { throwIfNoEntry: false })?.mtimeMs ?? 0) < 5000) return undefined;
          rmSync(lock, { force: true });
        }
      }
      return undefined;
    },
    sweep() {
      if (!existsSync(dir)) return;
      for (const e of readdirSync(dir)) {
        const p = join(dir, e);
        if (e.startsWith('.gone-')) rmSync(p, { recursive: true, force: true });
        else if (e.startsWith('.build-')) {
          const owner = readJson<Owner>(join(p, 'owner.json'));
          if ((owner && !ownerAlive(owner)) || (!owner && Date.now() - statSync(p).mtimeMs > 60_000)) rmSync(p, { recursive: true, force: true });
        } else if (e.startsWith('.lock-')) {
          const owner = readJson<Owner>(p);
          if (owner && !ownerAlive(owner)) rmSync(p, { force: true });
        }
      }
    },
    markUsed(id) {
      try {
        const now = new Date();
        utimesSync(join(dir, id, 'used'), now, now);
      } catch {
        /* removed meanwhile */
      }
    },
  };
  return store;
}

function canonicalKey(k: SnapshotKey): SnapshotKey {
  return {
    image: k.image,
    arch: k.arch,
    cpus: k.cpus,
    memoryBytes: k.memoryBytes,
    diskBytes: k.diskBytes,
    devices: k.devices,
    qemu: k.qemu,
    init: k.init,
    accel: k.accel,
    ...(k.hostCpu ? { hostCpu: k.hostCpu } : {}),
    ...(k.cacheBytes !== undefined ? { cacheBytes: k.cacheBytes } : {}),
  };
}

function readJson<T>(p: string): T | undefined {
  try {
    return JSON.parse(readFileSync(p, 'utf8')) as T;
  } catch {
    return undefined;
  }
}
