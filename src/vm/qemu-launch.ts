/**
 * QEMU VM lifecycle, step 2 (launch): the QEMU command line for a prepared VM, and QEMU started inside the
 * VM's cgroup through a small shell wrapper that also dies with kiln.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import type { Arch } from '../core/arch.ts';
import type { VmSpec } from './driver.ts';
import { forwardSocketPath } from './forwards.ts';
import type { PreparedVm } from './qemu-prepare.ts';
import { buildQemuArgs, qemuBinary } from './qemu-args.ts';

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

export function qemuArgsFor(spec: VmSpec, vm: PreparedVm, o: LaunchOptions): string[] {
  const network = hasNic(spec)
    ? { restrict: spec.network !== 'user', forwards: (spec.forwards ?? []).map((f, i) => ({ guestAddr: f.guestAddr, guestPort: f.guestPort, socket: forwardSocketPath(vm.host.vmDir, i) })) }
    : undefined;
  const tscKhz = spec.arch === 'amd64' && o.hostArch === 'amd64' && o.accel === 'tcg' ? o.tscKhz() : undefined;
  return buildQemuArgs({
    id: spec.id,
    arch: spec.arch,
    accel: o.accel,
    cpus: spec.cpus,
    memoryMiB: Math.ceil(spec.memoryBytes / MiB),
    kernel: spec.image.kernelPath,
    initrd: spec.image.initrdPath,
    ...(spec.image.cmdline || spec.registryMirror
      ? { cmdline: [...(spec.image.cmdline ?? []), ...(spec.registryMirror ? [`kiln.registry_mirror=${spec.registryMirror}`] : [])] }
      : {}),
    sockets: vm.paths,
    consoleLog: join(vm.host.vmDir, 'console.log'),
    pidFile: join(vm.host.vmDir, 'qemu.pid'),
    scratchDisk: vm.scratchDisk,
    ...(tscKhz !== undefined ? { tscKhz } : {}),
    ...(vm.rootOverlay ? { rootDisk: vm.rootOverlay } : {}),
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
