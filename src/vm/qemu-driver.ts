/**
 * The QEMU VM driver: one single-use VM per job. Each lifecycle step has its own file (see docs/ARCHITECTURE.md):
 *   prepare   qemu-prepare.ts   spec checked, VM directory, sockets, image verified, copy-on-write disks, cgroup
 *   launch    qemu-launch.ts    QEMU's command line; QEMU started inside the cgroup with a parent-death signal
 *   restore   qemu-restore.ts   warm starts only: the snapshot's state loaded, the guest's own identity, the job
 *   wait      qemu-wait.ts      kiln-init answers READY on kiln.ctl; the job is sent; output streams; EXIT <code>
 *   collect   qemu-collect.ts   output drained, console tail read, the result built
 *   tear down qemu-teardown.ts  sockets closed, cgroup and VM directory removed
 *   sweep     qemu-sweep.ts     what dead kilns left behind removed at start-up
 * Warm starts (opts.snapshots): boot is replaced by a restore of a snapshot (src/vm/snapshot-*.ts); a restore
 * that fails before the job is sent tears down and boots cold.
 * Whatever happens (timeout, kill, crash, boot failure), `done` settles only after teardown.
 */
import type { ChildProcess } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus as osCpus, totalmem } from 'node:os';
import { join, resolve } from 'node:path';
import { createHash } from 'node:crypto';
import type { Logger } from 'pino';
import { archFromNode, type Arch } from '../core/arch.ts';
import { KilnError, toKilnError } from '../core/errors.ts';
import { chooseAccel, realHostProbe, type AccelChoice } from './accel.ts';
import { detectCgroups, type CgroupLayout } from './cgroups.ts';
import { freeBytes } from './disks.ts';
import { applyEgress, egressProblem, parseAllowEntry } from './egress.ts';
import type { DriverCapabilities, RunningVm, SnapshotPort, VmDriver, VmInfo, VmOutput, VmPhase, VmResult, VmSpec, VmTimings } from './driver.ts';
import { readText, which } from './files.ts';
import { hostTscKhz, qemuBinary, qemuPackage } from './qemu-args.ts';
import { collectVm, vmResult } from './qemu-collect.ts';
import { launchBase, launchQemu, qemuArgsFor, type LaunchOptions } from './qemu-launch.ts';
import { makeVmDir, prepareVm, validateVmSpec, verifyImage, vmDirExists, type PreparedVm, type VmHostResources } from './qemu-prepare.ts';
import { restoreVm } from './qemu-restore.ts';
import { sweepVms } from './qemu-sweep.ts';
import { teardownVm } from './qemu-teardown.ts';
import { defaultBootTimeoutMs, watchVm } from './qemu-wait.ts';
import { DEFAULT_SNAPSHOT_BUDGET, makeSnapshotStore } from './snapshot-store.ts';
import { makeWarmStarts, type WarmChoice, type WarmStarts } from './snapshot-warm.ts';

export interface QemuDriverOptions {
  dataDir: string;
  accel?: 'auto' | 'kvm' | 'tcg';
  /** Boot (QEMU start to kiln-init READY) limit; default depends on the accelerator. */
  bootTimeoutMs?: number;
  logger?: Logger;
  /** Extra memory the QEMU process may use beyond guest RAM before its cgroup limit. */
  memoryOverheadBytes?: number;
  /**
   * Guest egress (docs/network.md). `allow`: CIDRs and host names every VM of this driver may reach even though
   * they are closed by default. `unfiltered`: no filter at all (guests reach the host's loopback and networks);
   * only for hosts that cannot filter (not root), chosen explicitly and logged at every VM start.
   */
  egress?: { allow?: string[]; unfiltered?: boolean };
  /**
   * Warm starts from memory snapshots (src/vm/snapshot-*.ts); off unless set. `buildOnMiss: false` (the agent):
   * a VM without a snapshot boots cold and the caller builds snapshots through `snapshots` (the port).
   */
  snapshots?: { budgetBytes?: number; buildOnMiss?: boolean };
}

export interface QemuDriver extends VmDriver {
  accelFor(arch: Arch): AccelChoice;
  /** Warm-start snapshots of this driver's data directory, when enabled. */
  readonly warm: WarmStarts | undefined;
}

const MiB = 1024 * 1024;

export function makeQemuDriver(opts: QemuDriverOptions): QemuDriver {
  const vmsDir = join(opts.dataDir, 'vms');
  const disksDir = join(opts.dataDir, 'cache', 'disks');
  const hostArch = archFromNode(process.arch);
  const running = new Map<string, { arch: Arch; phase: () => VmPhase }>();
  let layout: CgroupLayout | undefined;
  let loweredOwnOom = false;
  let tscKhz: number | undefined;
  /** Cgroup names are `<vm id>.<tag of the data directory>`: VM ids need only be unique per data directory. */
  const dataTag = createHash('sha256').update(resolve(opts.dataDir)).digest('hex').slice(0, 8);

  const accelFor = (arch: Arch) => chooseAccel(arch, hostArch, realHostProbe, opts.accel ?? 'auto');

  /** kiln itself should outlive its VMs when memory runs short. */
  const lowerOwnOomScore = () => {
    if (loweredOwnOom || process.getuid?.() !== 0) return;
    loweredOwnOom = true;
    try {
      writeFileSync('/proc/self/oom_score_adj', '-500');
    } catch {
      /* best effort: an unprivileged kiln cannot lower its own score */
    }
  };

  for (const a of opts.egress?.allow ?? []) parseAllowEntry(a);

  /** Whether this VM's network goes through the egress filter; throws if it should and cannot. */
  const filterEgress = (spec: VmSpec, log: Logger | undefined): boolean => {
    if (spec.network !== 'user') return false; // closed: slirp's restrict=on lets nothing out but the forwards
    if (opts.egress?.unfiltered) {
      log?.warn('guest egress is NOT filtered (egress unfiltered): this guest reaches the host and its networks');
      return false;
    }
    layout ??= detectCgroups();
    const problem = egressProblem(layout.v2Root, readText('/proc/mounts'));
    if (problem) {
      throw new KilnError('vm.egress_unavailable', `a guest with a network cannot be kept off the host here: ${problem}`, {
        hint: 'run kiln as root on a host with cgroup v2 and nftables (`kiln setup`), or accept guests that reach the host and its networks with --egress unfiltered',
      });
    }
    return true;
  };

  const bootTimeoutFor = (spec: VmSpec, accel: 'kvm' | 'tcg') => opts.bootTimeoutMs ?? defaultBootTimeoutMs(spec, accel);
  const warm = opts.snapshots
    ? makeWarmStarts({
        store: makeSnapshotStore(opts.dataDir, opts.snapshots),
        disksDir,
        bootTimeoutMs: bootTimeoutFor,
        ...(opts.snapshots.buildOnMiss === false ? { buildOnMiss: false } : {}),
        ...(opts.logger ? { logger: opts.logger } : {}),
      })
    : undefined;
  const launchOptions = (accel: 'kvm' | 'tcg'): LaunchOptions => ({ accel, hostArch, tscKhz: () => (tscKhz ??= hostTscKhz(readText('/proc/cpuinfo'))) });

  const WARM_OFF = 'warm starts are off';
  /**
   * Why this spec boots cold even with warm starts on; undefined if it may restore. Every image, network mode,
   * forward and cache disk restores warm now (docs/ARCHITECTURE.md, "Warm starts"): the per-VM settings travel
   * on kiln.ctl after the restore, the forwards are the restored QEMU's own (its command line, its VM
   * directory), and a cache disk goes behind the snapshot's cache slot (docs/caches.md).
   */
  const coldReason = (spec: VmSpec): string | undefined => {
    if (!warm || spec.warm === false) return WARM_OFF;
    return undefined;
  };

  async function start(spec: VmSpec, out: VmOutput): Promise<RunningVm> {
    validateVmSpec(spec, (id) => running.has(id) || vmDirExists(vmsDir, id));
    const t0 = performance.now();
    const accel = accelFor(spec.arch).accel;
    // Checked before any snapshot is built: a network that cannot be filtered fails the VM either way.
    const filtered = filterEgress(spec, opts.logger?.child({ vmId: spec.id }));
    let choice: WarmChoice | undefined;
    const why = coldReason(spec);
    if (warm && why === undefined) {
      await verifyImage(spec);
      choice = await warm.choose(spec, accel, launchBase(spec, launchOptions(accel), false), out);
    } else if (warm && why !== WARM_OFF) {
      // One line for the user (kiln run) and in the log (the agent has no note sink).
      out.note?.(`cold start: ${why}`);
      opts.logger?.info({ vmId: spec.id }, `cold start: ${why}`);
    }
    if (choice) {
      try {
        return await attempt(spec, out, filtered, performance.now() - t0 - (choice.buildMs ?? 0), choice);
      } catch (e) {
        const failure = toKilnError(e).message;
        warm!.drop(choice, failure);
        warm!.counters.fallbacks++;
        const line = `warm start failed (${failure}): booting cold; the snapshot was dropped and the next run rebuilds it`;
        out.note?.(line);
        opts.logger?.warn({ vmId: spec.id }, line);
      }
    }
    if (warm) warm.counters.cold++;
    return attempt(spec, out, filtered, choice ? 0 : performance.now() - t0, undefined);
  }

  /** One launch of a VM: cold (boot) or warm (restore `snap`). A warm attempt that fails before the job is sent throws, after its teardown. */
  async function attempt(spec: VmSpec, out: VmOutput, filtered: boolean, earlierPrepareMs: number, snap: WarmChoice | undefined): Promise<RunningVm> {
    const tAttempt = performance.now();
    const log = opts.logger?.child({ vmId: spec.id });
    const accel = accelFor(spec.arch).accel;
    const { host, paths } = makeVmDir(vmsDir, spec.id);
    lowerOwnOomScore();

    let phase: () => VmPhase = () => 'preparing';
    running.set(spec.id, { arch: spec.arch, phase: () => phase() });
    const teardown = async (h: VmHostResources) => {
      await teardownVm(h, log);
      running.delete(spec.id);
    };

    // ---- prepare, launch
    let vm: PreparedVm;
    let proc: ChildProcess;
    try {
      layout ??= detectCgroups();
      const name = `${spec.id}.${dataTag}`;
      vm = await prepareVm(spec, host, paths, {
        dataDir: opts.dataDir,
        disksDir,
        layout,
        cgroupName: name,
        memoryOverheadBytes: opts.memoryOverheadBytes ?? 256 * MiB,
        netCgroup: filtered,
        ...(snap ? { snapshotDir: snap.dir } : {}),
        log,
      });
      if (filtered && layout.v2Root) {
        host.egressName = name;
        const allow = [...(opts.egress?.allow ?? []), ...(spec.egress?.allow ?? [])];
        await applyEgress(name, join(layout.v2Root, 'kiln', name), layout.v2Root, { allow }, readText('/etc/resolv.conf'));
      }
      // The egress chain is in place before QEMU starts, and QEMU (booting or restoring) starts in the VM's cgroup.
      const args = qemuArgsFor(spec, vm, launchOptions(accel), snap?.dir);
      log?.debug({ args }, 'starting QEMU');
      proc = launchQemu(spec.arch, args, vm);
    } catch (e) {
      await teardown(host);
      throw toKilnError(e);
    }

    // ---- wait, collect, tear down
    const timings: VmTimings = {
      prepareMs: earlierPrepareMs + performance.now() - tAttempt,
      launchedAtMs: performance.now(),
      bootMs: 0,
      runMs: 0,
      teardownMs: 0,
      start: snap ? 'warm' : 'cold',
      ...(snap?.buildMs !== undefined ? { snapshotBuildMs: snap.buildMs } : {}),
    };
    const w = watchVm(spec, vm, proc, out, { accel, bootTimeoutMs: bootTimeoutFor(spec, accel), ...(snap ? { restoring: true } : {}), log });
    phase = () => w.phase;

    const done: Promise<VmResult> = (async () => {
      const code = await w.exited;
      const collected = await collectVm(w, code, host.vmDir, vm.accepted);
      w.phase = 'stopped';
      await teardown(host);
      const result = vmResult(w, collected, timings, performance.now(), accel);
      log?.debug({ timings, code }, 'VM gone');
      return result;
    })();

    // A warm VM: load the snapshot, start it, give it its own identity; only then the job (and its secrets).
    if (snap) {
      try {
        await restoreVm(w, vm, spec, snap.dir, accel);
        warm!.counters.warm++;
        warm!.counters.restoreMsTotal += w.tReady - w.tSpawn;
      } catch (e) {
        // The job's own time ran out during the restore: that is its result, not a fault of the snapshot.
        if (w.stopReason?.kind !== 'timed_out') {
          w.stop({ kind: 'killed', reason: 'warm start failed' });
          await done;
          throw e;
        }
      }
    }

    return {
      id: spec.id,
      done,
      phase: () => w.phase,
      async kill(reason) {
        w.stop({ kind: 'killed', reason });
        await done;
      },
    };
  }

  const budgetBytes = opts.snapshots?.budgetBytes ?? DEFAULT_SNAPSHOT_BUDGET;
  const snapshots: SnapshotPort | undefined = warm && {
    budgetBytes,
    usedBytes: () => warm.store.list().reduce((n, x) => n + x.bytes, 0),
    find(spec) {
      const found = warm.store.find(warm.keyFor(spec, accelFor(spec.arch).accel));
      return 'snap' in found ? { bytes: found.snap.bytes } : undefined;
    },
    async build(spec, signal) {
      const accel = accelFor(spec.arch).accel;
      await verifyImage(spec);
      const log = opts.logger?.child({ image: spec.image.digest.slice(7, 19) });
      const built = await warm.build(spec, accel, launchBase(spec, launchOptions(accel), false), (line) => log?.info(line), signal);
      return built && { bytes: built.snap.bytes };
    },
    onDrop: (cb) => warm.onDrop(cb),
  };

  return {
    name: 'qemu',
    accelFor,
    warm,
    ...(snapshots ? { snapshots } : {}),
    async capabilities(): Promise<DriverCapabilities> {
      mkdirSync(opts.dataDir, { recursive: true });
      const arches: DriverCapabilities['arches'] = (['amd64', 'arm64'] as const).map((arch) => {
        const c = accelFor(arch);
        const bin = which(qemuBinary(arch));
        return bin ? { arch, accel: c.accel, note: c.reason } : { arch, accel: 'none' as const, note: `${qemuBinary(arch)} is missing (Debian package ${qemuPackage(arch)})` };
      });
      return { arches, cpus: osCpus().length, memoryBytes: totalmem(), diskFreeBytes: freeBytes(opts.dataDir) };
    },
    start: async (spec, out) => {
      if (!which(qemuBinary(spec.arch))) {
        throw new KilnError('host.missing_qemu', `${qemuBinary(spec.arch)} is not installed, so ${spec.arch} guests cannot run`, {
          hint: `install the Debian package ${qemuPackage(spec.arch)} (or run \`kiln setup\`)`,
        });
      }
      if (!which('setpriv')) throw new KilnError('host.missing_command', '`setpriv` is not installed', { hint: 'install the Debian package util-linux' });
      return start(spec, out);
    },
    list: (): VmInfo[] => [...running].map(([id, v]) => ({ id, arch: v.arch, phase: v.phase() })),
    sweep: () => {
      warm?.store.sweep();
      return sweepVms({ vmsDir, layout: (layout ??= detectCgroups()), dataTag, isRunning: (id) => running.has(id), logger: opts.logger });
    },
  };
}
