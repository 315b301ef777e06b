/**
 * Which snapshot a VM restores from, for the QEMU driver: looks the key up in the store (cheap checks
 * only), builds the snapshot in a template VM when there is none yet (one builder per key across
 * processes), and says in one line why a VM boots cold instead.
 */
import { randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { toKilnError } from '../core/errors.ts';
import type { VmOutput, VmSpec } from './driver.ts';
import { ensureScratchBase } from './disks.ts';
import { which } from './files.ts';
import { qemuBinary, type QemuLaunch } from './qemu-args.ts';
import type { SnapshotKey, SnapshotRecord, SnapshotStore } from './snapshot-store.ts';
import { buildTemplate, hostCpuModel, qemuVersion, snapshotDevices, warmInitVersion } from './snapshot-template.ts';
import { qcow2VirtualSize } from './qcow2.ts';

export interface WarmChoice {
  snap: SnapshotRecord;
  dir: string;
  /** Set when this VM waited for the snapshot to be built. */
  buildMs?: number;
}

export interface WarmStarts {
  readonly store: SnapshotStore;
  keyFor(spec: VmSpec, accel: 'kvm' | 'tcg'): SnapshotKey;
  /**
   * The snapshot to restore `spec` from; undefined (after one note) means boot cold. A missing one is built now
   * (`kiln run`), or, with `buildOnMiss: false` (the agent, whose planner builds ahead of need), left missing.
   */
  choose(spec: VmSpec, accel: 'kvm' | 'tcg', launch: TemplateLaunch, out: VmOutput): Promise<WarmChoice | undefined>;
  /** Builds the snapshot for `spec` now (a template VM); undefined if another builder holds its lock. Throws if the build fails. */
  build(spec: VmSpec, accel: 'kvm' | 'tcg', launch: TemplateLaunch, note?: (line: string) => void, signal?: AbortSignal): Promise<WarmChoice | undefined>;
  /** A restore from this snapshot failed: drop it (the next VM of its key rebuilds it). */
  drop(choice: WarmChoice, why: string): void;
  counters: { warm: number; cold: number; fallbacks: number; builds: number; restoreMsTotal: number };
  /** Calls `cb` whenever a snapshot is dropped after a failed restore (the agent's planner rebuilds it). */
  onDrop(cb: () => void): void;
}

/**
 * The cache slot a VM of this spec restores into: its cache disk's virtual size (what the guest sees, read
 * from the qcow2 header), or, for a build ahead of need, `cacheBytes`; undefined without a cache.
 */
export function cacheSlotBytes(spec: Pick<VmSpec, 'cacheDisk' | 'cacheBytes'>): number | undefined {
  if (spec.cacheDisk !== undefined) return qcow2VirtualSize(spec.cacheDisk);
  return spec.cacheBytes;
}

export type TemplateLaunch = Omit<QemuLaunch, 'sockets' | 'consoleLog' | 'pidFile' | 'scratchDisk' | 'rootDisk' | 'ramFile' | 'incomingDefer' | 'network'>;

export function makeWarmStarts(o: {
  store: SnapshotStore;
  disksDir: string;
  bootTimeoutMs: (spec: VmSpec, accel: 'kvm' | 'tcg') => number;
  logger?: Logger;
  /** false: a VM whose snapshot is missing boots cold and nothing is built for it here (default true). */
  buildOnMiss?: boolean;
}): WarmStarts {
  const keyFor = (spec: VmSpec, accel: 'kvm' | 'tcg'): SnapshotKey => {
    const cacheBytes = cacheSlotBytes(spec);
    return {
      image: spec.image.digest,
      arch: spec.arch,
      cpus: spec.cpus,
      memoryBytes: spec.memoryBytes,
      diskBytes: spec.diskBytes,
      devices: snapshotDevices(spec.image.rootDiskPath !== undefined, cacheBytes !== undefined),
      qemu: qemuVersion(which(qemuBinary(spec.arch)) ?? qemuBinary(spec.arch), join(o.disksDir, '..', 'qemu-version.json')),
      init: warmInitVersion(cacheBytes !== undefined),
      accel,
      ...(accel === 'kvm' ? { hostCpu: hostCpuModel() } : {}),
      ...(cacheBytes !== undefined ? { cacheBytes } : {}),
    };
  };
  const counters = { warm: 0, cold: 0, fallbacks: 0, builds: 0, restoreMsTotal: 0 };
  const build = async (spec: VmSpec, accel: 'kvm' | 'tcg', launch: TemplateLaunch, key: SnapshotKey, note: (line: string) => void, signal?: AbortSignal): Promise<WarmChoice | undefined> => {
    const release = o.store.lockBuild(key);
    if (!release) return undefined;
    const t0 = performance.now();
    const staging = o.store.staging();
    try {
      const again = o.store.find(key);
      if ('snap' in again) return again;
      note(`building a warm-start snapshot of image ${spec.image.digest.slice(7, 19)} (once per image and VM shape)`);
      const scratchBase = await ensureScratchBase(o.disksDir, spec.diskBytes);
      await buildTemplate({
        staging,
        key,
        launch: { ...launch, id: `tpl-${randomBytes(4).toString('hex')}` },
        scratchBase,
        ...(spec.image.rootDiskPath ? { rootDiskPath: spec.image.rootDiskPath } : {}),
        ...(key.cacheBytes !== undefined ? { cacheBytes: key.cacheBytes } : {}),
        bootTimeoutMs: o.bootTimeoutMs(spec, accel),
        ...(signal ? { signal } : {}),
      });
      signal?.throwIfAborted();
      const snap = await o.store.commit(staging, key, performance.now() - t0);
      counters.builds++;
      // Hashing the files as they enter the store is part of the build, not of this VM's prepare.
      return { snap, dir: join(o.store.dir, snap.id), buildMs: performance.now() - t0 };
    } finally {
      rmSync(staging, { recursive: true, force: true });
      release();
    }
  };
  let swept = false;
  const dropped: (() => void)[] = [];
  return {
    store: o.store,
    keyFor,
    counters,
    async choose(spec, accel, launch, out) {
      const note = (line: string) => {
        out.note?.(line);
        o.logger?.info({ vmId: spec.id }, line);
      };
      let key: SnapshotKey;
      try {
        if (!swept) {
          swept = true;
          o.store.sweep();
        }
        key = keyFor(spec, accel);
        const found = o.store.find(key);
        if ('snap' in found) {
          o.store.markUsed(found.snap.id);
          return found;
        }
        if ('problem' in found) note(`warm start: ${found.problem}; it was dropped and is rebuilt now`);
      } catch (e) {
        note(`cold start: the snapshot store cannot be read (${toKilnError(e).message})`);
        return undefined;
      }
      if (o.buildOnMiss === false) {
        note('cold start: no warm-start snapshot of this image and VM shape yet (the host builds one ahead of the next job)');
        return undefined;
      }
      try {
        const built = await build(spec, accel, launch, key, note);
        if (!built) note('cold start: another kiln is building the snapshot for this image and VM shape');
        return built;
      } catch (e) {
        note(`cold start: the warm-start snapshot could not be built (${toKilnError(e).message})`);
        return undefined;
      }
    },
    build: (spec, accel, launch, note, signal) => build(spec, accel, launch, keyFor(spec, accel), note ?? (() => undefined), signal),
    drop(choice, why) {
      o.store.remove(choice.snap.id);
      o.logger?.warn({ snapshot: choice.snap.id, why }, 'warm-start snapshot dropped');
      for (const cb of dropped) cb();
    },
    onDrop: (cb) => void dropped.push(cb),
  };
}
