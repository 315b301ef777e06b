/**
 * The agent's warm-start planner: which snapshots this host builds ahead of need. Every job launch counts a
 * use of its image and VM shape (kept in `<data>/snapshots/usage.json`, so a restarted agent remembers);
 * after each launch and at start-up the planner walks the shapes most used first and builds, one at a time,
 * the snapshot of each that has none (a new image digest, a QEMU upgrade or a dropped snapshot all read as
 * "none"), as long as it fits in the store's disk budget. A job whose snapshot is missing boots cold meanwhile:
 * it never waits for a build. The states (ready, building, failed) go to the server in host.status.
 */
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';
import type { SnapshotStateMsg } from '../core/agent-protocol.ts';
import type { Arch } from '../core/arch.ts';
import { toKilnError } from '../core/errors.ts';
import type { SnapshotPort, VmSpec } from '../vm/driver.ts';
import type { ImageResolver } from './images.ts';

export interface SnapshotShape {
  /** The image as jobs name it (`default`, `ci`, a digest): resolved again before every build. */
  image: string;
  arch: Arch;
  cpus: number;
  memoryBytes: number;
  diskBytes: number;
  /** Jobs with a cache of this size: their snapshot has a cache slot (docs/caches.md). */
  cacheBytes?: number;
}

interface Usage extends SnapshotShape {
  uses: number;
  lastUsedMs: number;
}

export interface SnapshotPlanner {
  /** A job of this image and shape is being launched now. */
  noteUse(shape: SnapshotShape): void;
  /** What the host has per image and shape in use, most used first. */
  states(): SnapshotStateMsg[];
  /** Resolves when no build is running or queued. */
  idle(): Promise<void>;
  stop(): Promise<void>;
}

const keyOf = (s: SnapshotShape) => `${s.image}|${s.arch}|${s.cpus}|${s.memoryBytes}|${s.diskBytes}${s.cacheBytes !== undefined ? `|cache=${s.cacheBytes}` : ''}`;
/** At most this many shapes are remembered (the least used are forgotten first). */
const MAX_SHAPES = 100;

export function makeSnapshotPlanner(o: {
  port: SnapshotPort;
  images: ImageResolver;
  dataDir: string;
  log: Logger;
  /** Called when a state changes (the agent sends host.status). */
  changed(): void;
}): SnapshotPlanner {
  const file = join(o.dataDir, 'snapshots', 'usage.json');
  const usage = new Map<string, Usage>();
  try {
    for (const u of JSON.parse(readFileSync(file, 'utf8')) as Usage[]) {
      if (u && typeof u.image === 'string' && Number.isInteger(u.cpus) && Number.isInteger(u.uses)) usage.set(keyOf(u), u);
    }
  } catch {
    /* first start, or an unreadable file: start counting again */
  }
  const state = new Map<string, { state: SnapshotStateMsg['state']; digest?: string; bytes?: number; error?: string }>();
  let running: Promise<void> | undefined;
  let again = false;
  let stopped = false;
  const aborter = new AbortController();

  const save = () => {
    try {
      mkdirSync(join(o.dataDir, 'snapshots'), { recursive: true, mode: 0o700 });
      writeFileSync(`${file}.${process.pid}`, JSON.stringify([...usage.values()]), { mode: 0o600 });
      renameSync(`${file}.${process.pid}`, file);
    } catch (e) {
      o.log.warn({ err: toKilnError(e).message }, 'could not save the snapshot usage counts');
    }
  };
  const set = (k: string, v: { state: SnapshotStateMsg['state']; digest?: string; bytes?: number; error?: string }) => {
    const prev = state.get(k);
    state.set(k, v);
    if (prev?.state !== v.state || prev.digest !== v.digest) o.changed();
  };
  const ordered = () => [...usage.values()].sort((a, b) => b.uses - a.uses || b.lastUsedMs - a.lastUsedMs);

  /** One pass over the shapes in use, most used first: builds what is missing and fits. */
  const pass = async () => {
    for (const u of ordered()) {
      if (stopped) return;
      const k = keyOf(u);
      let spec: VmSpec;
      try {
        const image = await o.images(u.image, u.arch);
        spec = {
          id: 'planner',
          arch: u.arch,
          cpus: u.cpus,
          memoryBytes: u.memoryBytes,
          diskBytes: u.diskBytes,
          ...(u.cacheBytes !== undefined ? { cacheBytes: u.cacheBytes } : {}),
          image,
          job: { command: ['true'], env: {} },
          timeoutMs: 1,
        };
      } catch (e) {
        set(k, { state: 'failed', error: `the image cannot be used: ${toKilnError(e).message}`.slice(0, 500) });
        continue;
      }
      const digest = spec.image.digest;
      const have = o.port.find(spec);
      if (have) {
        set(k, { state: 'ready', digest, bytes: have.bytes });
        continue;
      }
      const prev = state.get(k);
      // A build that failed for this digest is tried again only after the next use of the shape (noteUse clears it).
      if (prev?.state === 'failed' && prev.digest === digest) continue;
      // What a snapshot of this image already takes, else a guess: the guest's RAM file is sparse (about half used).
      const estimate = [...state.values()].find((x) => x.digest === digest && x.bytes)?.bytes ?? Math.ceil(u.memoryBytes / 2);
      const used = o.port.usedBytes();
      if (used + estimate > o.port.budgetBytes) {
        set(k, { state: 'failed', digest, error: `not built: it would not fit in the snapshot disk budget (${used} of ${o.port.budgetBytes} bytes used, about ${estimate} more needed)` });
        continue;
      }
      set(k, { state: 'building', digest });
      try {
        const built = await o.port.build(spec, aborter.signal);
        if (built) set(k, { state: 'ready', digest, bytes: built.bytes });
        else set(k, { state: 'building', digest }); // another process builds it; the next pass sees it
      } catch (e) {
        const k2 = toKilnError(e);
        o.log.warn({ code: k2.code, msg: k2.message, image: u.image }, 'could not build a warm-start snapshot; jobs of this image and shape boot cold');
        set(k, { state: 'failed', digest, error: k2.message.slice(0, 500) });
      }
    }
  };
  const kick = () => {
    if (stopped) return;
    if (running) {
      again = true;
      return;
    }
    running = (async () => {
      do {
        again = false;
        await pass().catch((e: unknown) => o.log.error({ err: e }, 'the snapshot planner failed'));
      } while (again && !stopped);
    })().finally(() => (running = undefined));
  };

  if (usage.size > 0) setImmediate(kick);
  // A restore that failed dropped its snapshot: look again (the pass finds it missing and rebuilds it).
  o.port.onDrop(kick);

  return {
    noteUse(shape) {
      const k = keyOf(shape);
      const u = usage.get(k) ?? { ...shape, uses: 0, lastUsedMs: 0 };
      u.uses++;
      u.lastUsedMs = Date.now();
      usage.set(k, u);
      if (usage.size > MAX_SHAPES) {
        const least = ordered().pop();
        if (least) {
          usage.delete(keyOf(least));
          state.delete(keyOf(least));
        }
      }
      if (state.get(k)?.state === 'failed') state.delete(k);
      save();
      kick();
    },
    states() {
      return ordered().flatMap((u) => {
        const s = state.get(keyOf(u));
        if (!s) return [];
        return [
          {
            image: u.image,
            arch: u.arch,
            cpus: u.cpus,
            memoryBytes: u.memoryBytes,
            diskBytes: u.diskBytes,
            ...(u.cacheBytes !== undefined ? { cacheBytes: u.cacheBytes } : {}),
            uses: u.uses,
            state: s.state,
            ...(s.digest ? { digest: s.digest } : {}),
            ...(s.bytes !== undefined ? { bytes: s.bytes } : {}),
            ...(s.error ? { error: s.error } : {}),
          },
        ];
      }).slice(0, 200);
    },
    async idle() {
      while (running) await running;
    },
    async stop() {
      // A template build still running is cut short: its VM is killed and its staging directory removed.
      stopped = true;
      aborter.abort();
      await running;
    },
  };
}
