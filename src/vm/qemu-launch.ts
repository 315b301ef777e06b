/**
 * QEMU VM lifecycle, step 2 (launch): the QEMU command line for a prepared VM (booting, or waiting for a
 * warm-start snapshot's state), and QEMU started inside the VM's cgroup through a small shell wrapper that
 * also dies with kiln. A restored QEMU is started the same way, so the egress filter (keyed by the cgroup)
 * applies to it too.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import type { Arch } from '../core/arch.ts';
import type { VmSpec } from './driver.ts';
import { forwardSocketPath } from './forwards.ts';
import type { PreparedVm } from './qemu-prepare.ts';
import { buildQemuArgs, qemuBinary } from './qemu-args.ts';
import { CACHE_SLOT_WORD } from './snapshot-template.ts';
import type { TemplateLaunch } from './snapshot-warm.ts';

const MiB = 1024 * 1024;

/** Shell run between Node and QEMU: join the cgroups, make the VM the OOM killer's first choice, die with kiln. */
const LAUNCH_WRAPPER =
  'for f in $KILN_CGROUP_PROCS; do echo $$ > "$f" || exit 97; done; ' +
  'echo 500 > /proc/self/oom_score_adj 2>/dev/null; ' +
  'exec setpriv --pdeathsig KILL -- "$@"';

/** Exit code of the wrapper when QEMU could not join its cgroup. */
export const CGROUP_JOIN_FAILED = 97;

export interface LaunchOptions {
  accel: 'kvm' | 'tcg';
  hostArch: Arch | undefined;
  /** The host's TSC rate, asked for only when an amd64 guest runs under TCG on an amd64 host. */
  tscKhz: () => number | undefined;
}

/** A VM has a NIC when its network is open or something is forwarded to it; kiln-init then configures it. */
export function hasNic(spec: VmSpec): boolean {
  return spec.network === 'user' || (spec.forwards?.length ?? 0) > 0;
}

/**
 * kiln's launch of this spec without per-VM files: what a warm-start template and a restore must share. A
 * snapshot's kernel command line is the template's (never read again), so the registry mirror words are only
 * added for a cold boot (`withMirror`); a restored VM gets them on kiln.ctl (MIRROR, MIRRORS: qemu-restore.ts).
 * A snapshot launch (template or restore) of a VM with a cache carries the cache-slot word instead.
 */
export function launchBase(spec: VmSpec, o: LaunchOptions, withMirror: boolean): TemplateLaunch {
  const mirror = withMirror
    ? [...(spec.registryMirror ? [`kiln.registry_mirror=${spec.registryMirror}`] : []), ...(spec.registryMirrors ?? []).map((m) => `kiln.mirror.${m.registry}=${m.address}`)]
    : // A snapshot with a cache slot: its template's kiln-init must not mount the placeholder (a restore keeps the word: same command line).
      spec.cacheDisk !== undefined || spec.cacheBytes !== undefined
      ? [CACHE_SLOT_WORD]
      : [];
  const tscKhz = spec.arch === 'amd64' && o.hostArch === 'amd64' && o.accel === 'tcg' ? o.tscKhz() : undefined;
  return {
    id: spec.id,
    arch: spec.arch,
    accel: o.accel,
    cpus: spec.cpus,
    memoryMiB: Math.ceil(spec.memoryBytes / MiB),
    kernel: spec.image.kernelPath,
    initrd: spec.image.initrdPath,
    ...(spec.image.cmdline || mirror.length > 0 ? { cmdline: [...(spec.image.cmdline ?? []), ...mirror] } : {}),
    ...(tscKhz !== undefined ? { tscKhz } : {}),
  };
}

/** QEMU's arguments for a prepared VM; with `snapshotDir`, a restore of that snapshot (RAM file mapped privately, `-incoming defer`). */
export function qemuArgsFor(spec: VmSpec, vm: PreparedVm, o: LaunchOptions, snapshotDir?: string): string[] {
  // A snapshot always has a NIC (the device set must match); it stays closed unless the job asks.
  const network =
    snapshotDir || hasNic(spec)
      ? { restrict: spec.network !== 'user', forwards: (spec.forwards ?? []).map((f, i) => ({ guestAddr: f.guestAddr, guestPort: f.guestPort, socket: forwardSocketPath(vm.host.vmDir, i) })) }
      : undefined;
  return buildQemuArgs({
    ...launchBase(spec, o, !snapshotDir),
    ...(snapshotDir ? { ramFile: { path: join(snapshotDir, 'ram'), shared: false }, incomingDefer: true } : {}),
    sockets: vm.paths,
    consoleLog: join(vm.host.vmDir, 'console.log'),
    pidFile: join(vm.host.vmDir, 'qemu.pid'),
    scratchDisk: vm.scratchDisk,
    ...(vm.rootOverlay ? { rootDisk: vm.rootOverlay } : {}),
    ...(spec.cacheDisk ? { cacheDisk: spec.cacheDisk } : {}),
    ...(network ? { network } : {}),
  });
}

/** Starts QEMU in the VM's cgroup; it connects to the prepared sockets as it comes up. */
export function launchQemu(arch: Arch, args: string[], vm: PreparedVm): ChildProcess {
  return spawn('/bin/sh', ['-c', LAUNCH_WRAPPER, 'kiln-launch', qemuBinary(arch), ...args], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin', KILN_CGROUP_PROCS: vm.cgroup.procsFiles.join(' ') },
  });
}
