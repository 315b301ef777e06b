/** Pure construction of QEMU command lines for kiln's guests (microvm on x86-64, virt on arm64). */
import type { Arch } from '../core/arch.ts';

export interface QemuLaunch {
  id: string;
  arch: Arch;
  accel: 'kvm' | 'tcg';
  cpus: number;
  memoryMiB: number;
  kernel: string;
  initrd: string;
  /** Extra kernel command-line words (after kiln's own). */
  cmdline?: string[];
  /** Unix sockets kiln listens on; QEMU connects to each at start-up. */
  sockets: { qmp: string; ctl: string; stdout: string; stderr: string };
  consoleLog: string;
  pidFile: string;
  scratchDisk?: string;
  rootDisk?: string;
  /** A warm cache disk (qcow2 overlay), found by the guest through its serial `kiln-cache`. */
  cacheDisk?: string;
  /**
   * A virtio-net NIC on QEMU user networking (IPv4 only). `restrict`: nothing leaves but the forwards.
   * Each forward runs `socat` per guest connection, to a unix socket kiln relays (src/vm/forwards.ts).
   */
  network?: { restrict: boolean; forwards: { guestAddr: string; guestPort: number; socket: string }[] };
  /**
   * x86-64 under TCG only: the TSC rate to tell the guest kernel. Under TCG the guest reads the host's TSC,
   * and calibrating it against the emulated PIT fails now and then (about 1 boot in 5 measured here), after
   * which the kernel has no usable clocksource on microvm and hangs. Telling it the rate skips calibration.
   */
  tscKhz?: number;
  /**
   * Warm starts (src/vm/snapshot-*.ts): guest RAM in a file. A template maps it shared (its RAM lands in
   * the file); a restored VM maps the snapshot's file privately (copy-on-write, the file never changes).
   */
  ramFile?: { path: string; shared: boolean };
  /** Restored VMs: wait for the device state over QMP (migrate-incoming) instead of booting. */
  incomingDefer?: boolean;
}

export function qemuBinary(arch: Arch): string {
  return arch === 'amd64' ? 'qemu-system-x86_64' : 'qemu-system-aarch64';
}

export function qemuPackage(arch: Arch): string {
  return arch === 'amd64' ? 'qemu-system-x86' : 'qemu-system-arm';
}

export function consoleDevice(arch: Arch): string {
  return arch === 'amd64' ? 'ttyS0' : 'ttyAMA0';
}

export function kernelCmdline(l: Pick<QemuLaunch, 'arch' | 'cmdline' | 'tscKhz'>): string {
  const tsc = l.arch === 'amd64' && l.tscKhz ? [`tsc_early_khz=${l.tscKhz}`, 'tsc=reliable'] : [];
  return [`console=${consoleDevice(l.arch)}`, 'quiet', 'panic=-1', 'reboot=t', 'rdinit=/init', ...tsc, ...(l.cmdline ?? [])].join(' ');
}

/** The host's TSC rate in kHz from /proc/cpuinfo text (x86-64 hosts), for guests under TCG. */
export function hostTscKhz(cpuinfo: string): number | undefined {
  const mhz = /^cpu MHz\s*:\s*([\d.]+)/m.exec(cpuinfo)?.[1];
  const khz = mhz ? Math.round(Number(mhz) * 1000) : NaN;
  return Number.isFinite(khz) && khz > 0 ? khz : undefined;
}

export function buildQemuArgs(l: QemuLaunch): string[] {
  const ram = l.ramFile ? ',memory-backend=pc.ram' : '';
  const machine =
    l.arch === 'amd64' ? ['-M', `microvm,x-option-roms=off,isa-serial=on,acpi=on${ram}`] : ['-M', `virt,gic-version=max${ram}`];
  const accel = l.accel === 'kvm' ? ['-accel', 'kvm', '-cpu', 'host'] : ['-accel', 'tcg,thread=multi,tb-size=128', '-cpu', 'max'];
  const args = [
    '-name',
    `guest=kiln-vm-${l.id},process=kiln-vm-${l.id}`,
    ...machine,
    ...accel,
    '-m',
    `${l.memoryMiB}M`,
    '-smp',
    String(l.cpus),
    '-nodefaults',
    '-no-user-config',
    '-display',
    'none',
    '-no-reboot',
    '-pidfile',
    l.pidFile,
    '-kernel',
    l.kernel,
    '-initrd',
    l.initrd,
    '-append',
    kernelCmdline(l),
    '-chardev',
    `file,id=con,path=${l.consoleLog}`,
    '-serial',
    'chardev:con',
    '-chardev',
    `socket,id=qmp,path=${l.sockets.qmp}`,
    '-mon',
    'chardev=qmp,mode=control',
    '-device',
    'virtio-serial-device,max_ports=4',
    '-chardev',
    `socket,id=ctl,path=${l.sockets.ctl}`,
    '-device',
    'virtserialport,chardev=ctl,name=kiln.ctl',
    '-chardev',
    `socket,id=out,path=${l.sockets.stdout}`,
    '-device',
    'virtserialport,chardev=out,name=kiln.stdout',
    '-chardev',
    `socket,id=err,path=${l.sockets.stderr}`,
    '-device',
    'virtserialport,chardev=err,name=kiln.stderr',
    '-object',
    'rng-random,id=rng0,filename=/dev/urandom',
    '-device',
    'virtio-rng-device,rng=rng0',
  ];
  // Block devices: the scratch disk is always /dev/vda; a root disk (full images) comes second, /dev/vdb.
  // virtio-mmio slots are probed in reverse order of creation on both machines, so create them in reverse.
  const disks: string[][] = [];
  if (l.scratchDisk) disks.push(['scratch', l.scratchDisk, 'qcow2']);
  if (l.rootDisk) disks.push(['root', l.rootDisk, 'qcow2']);
  for (const [name, file, format] of disks) {
    args.push('-drive', `id=${name},file=${file},format=${format},if=none,cache=unsafe,discard=unmap`);
    args.push('-device', `virtio-blk-device,drive=${name}`);
  }
  // The cache disk outlives the VM (it may be committed), so the guest's flushes are honoured (writeback, not unsafe).
  if (l.cacheDisk) {
    args.push('-drive', `id=cache,file=${l.cacheDisk},format=qcow2,if=none,cache=writeback,discard=unmap`);
    args.push('-device', 'virtio-blk-device,drive=cache,serial=kiln-cache');
  }
  if (l.ramFile) {
    args.push('-object', `memory-backend-file,id=pc.ram,size=${l.memoryMiB}M,mem-path=${l.ramFile.path.replaceAll(',', ',,')},share=${l.ramFile.shared ? 'on' : 'off'}`);
  }
  if (l.incomingDefer) args.push('-incoming', 'defer');
  if (l.network) {
    const fwd = l.network.forwards.map((f) => `,guestfwd=tcp:${f.guestAddr}:${f.guestPort}-cmd:socat - UNIX-CONNECT:${f.socket}`).join('');
    args.push('-netdev', `user,id=n0,ipv6=off,restrict=${l.network.restrict ? 'on' : 'off'}${fwd}`);
    args.push('-device', 'virtio-net-device,netdev=n0');
  }
  return args;
}
