import type { Arch } from '../core/arch.ts';

/**
 * The port every VM driver implements: the real QEMU driver (src/vm/qemu-driver.ts) and any in-memory
 * fake used by scheduler tests. All of them pass test/vm-conformance.ts.
 */

/** What runs inside the guest. */
export interface GuestJob {
  /** argv[0] is looked up on the guest's PATH. */
  command: string[];
  env: Record<string, string>;
  /** Working directory inside the guest; defaults to the scratch disk's mount point (/work). */
  cwd?: string;
}

/** A guest image as the driver needs it: files on disk plus the digest to verify them against. */
export interface GuestImageRef {
  digest: string;
  arch: Arch;
  kernelPath: string;
  initrdPath: string;
  /** sha256 of each file, checked before boot so a corrupt image never boots. */
  kernelSha256: string;
  initrdSha256: string;
  /** Optional root disk (full CI images); booted read-only under a per-VM overlay. */
  rootDiskPath?: string;
  rootDiskSha256?: string;
  /** Extra kernel command-line words the image needs. */
  cmdline?: string[];
}

export interface VmSpec {
  /** Caller-chosen id; unique per driver. Letters, digits, '-' and '_' only. */
  id: string;
  arch: Arch;
  cpus: number;
  memoryBytes: number;
  diskBytes: number;
  image: GuestImageRef;
  job: GuestJob;
  /** Whole-job limit from boot start; on expiry the VM is killed and the result is `timed_out`. */
  timeoutMs: number;
  /**
   * 'none' (default): the guest has no route out. 'user': outbound NAT through QEMU user networking, through
   * the egress filter (docs/network.md): the internet, never the host, its networks, private or link-local ranges.
   */
  network?: 'none' | 'user';
  /**
   * Host TCP services exposed to the guest at fixed addresses (guest 10.0.2.x:port -> host 127.0.0.1:port),
   * with either network mode; each guest connection gets its own host connection.
   */
  forwards?: { guestAddr: string; guestPort: number; hostPort: number }[];
  /** What this VM's egress filter opens beyond the internet (CIDRs and host names), added to the driver's own list. */
  egress?: { allow: string[] };
  /**
   * Registry mirror (host:port as the guest reaches it) for images that run Docker/buildah (the ci
   * profile); passed as the kernel command-line word kiln.registry_mirror=<host:port>. Others ignore it.
   */
  registryMirror?: string;
  /**
   * Mirrors of other registries (ghcr.io, quay.io): the registry's name and the mirror's address as the guest
   * reaches it (an IP:port that `forwards` serve); passed as kernel command-line words
   * kiln.mirror.<registry>=<ip:port>. The ci profile configures containerd, BuildKit and buildah for them and
   * points the name at the IP for Docker (docs/mirror.md). Other images ignore them.
   */
  registryMirrors?: { registry: string; address: string }[];
  /**
   * Warm start (default true when the driver has a snapshot store): restore the VM from a memory snapshot
   * of the booted image instead of booting it; false always boots cold (`kiln run --cold`).
   */
  warm?: boolean;
  /**
   * A warm cache disk (src/vm/cache-store.ts): the qcow2 overlay the caller made, attached as an extra virtio
   * disk (serial kiln-cache) and mounted by kiln-init at /cache. The caller owns the file. A warm start restores
   * such a VM from a snapshot with a cache slot of the disk's virtual size (docs/caches.md).
   */
  cacheDisk?: string;
  /**
   * The cache disk's size (callers set it with `cacheDisk`: the cache's file system size). Alone, the shape of
   * a snapshot built ahead of need for cache jobs (the agent's planner). The QEMU driver keys a VM with a
   * cache disk by that disk's own virtual size.
   */
  cacheBytes?: number;
}

/** How a VM came up, as its start gate is told. */
export interface VmStartInfo {
  /** Restored from a snapshot (warm) or booted (cold). */
  start: 'warm' | 'cold';
  /** VMM start to the guest ready for the command. */
  bootMs: number;
}

export interface VmOutput {
  stdout(chunk: Buffer): void;
  stderr(chunk: Buffer): void;
  /**
   * The start gate: called once when the guest is up, before the job's command is handed to it. The command
   * starts only after the promise resolves; if it rejects, the VM is stopped (outcome `killed`, with the
   * rejection's message as the reason) and the command never runs. The agent waits here for the control
   * plane's start lease (at-most-once starts).
   */
  mayStart?(info: VmStartInfo): Promise<void>;
  /** Called once when the guest is up and the job starts (phase 'running'), so owners need not poll phase(). */
  running?(): void;
  /** One-line notes from the driver for the user (a warm start that fell back to cold, a snapshot being built). */
  note?(line: string): void;
}

export type VmPhase = 'preparing' | 'booting' | 'running' | 'stopping' | 'stopped';

export interface VmTimings {
  /** Host-side work before the VMM starts (disks, cgroups, sockets). */
  prepareMs: number;
  /** When the VMM was started, in ms since the owning process started (performance.now()). */
  launchedAtMs?: number;
  /** VMM start to the guest init's first message. */
  bootMs: number;
  /** Guest's own uptime when its init answered, as the guest reports it. */
  guestUptimeAtInitMs?: number;
  /** Job start to exit status received. */
  runMs: number;
  /** Exit status received (or kill decided) to everything removed. */
  teardownMs: number;
  /** Whether the VM was restored from a snapshot (warm) or booted (cold). */
  start?: 'warm' | 'cold';
  /** Time spent building the warm-start snapshot before this VM (first use of an image and shape). */
  snapshotBuildMs?: number;
}

export type VmResult =
  | {
      outcome: 'exited';
      exitCode: number;
      timings: VmTimings;
      /** With a cache disk: the guest synced and unmounted /cache before it reported the exit (only then may it be committed). */
      cacheClean?: boolean;
    }
  | { outcome: 'timed_out'; timings: VmTimings }
  | { outcome: 'killed'; reason: string; timings: VmTimings }
  | { outcome: 'boot_failed'; code: string; message: string; consoleTail: string[]; timings: VmTimings }
  | { outcome: 'crashed'; code: string; message: string; consoleTail: string[]; timings: VmTimings };

export interface RunningVm {
  readonly id: string;
  /** Settles once the VM is gone and all its host resources are removed. Never rejects. */
  readonly done: Promise<VmResult>;
  phase(): VmPhase;
  /** Stops the VM (idempotent); `done` then settles with outcome 'killed'. */
  kill(reason: string): Promise<void>;
}

export interface VmInfo {
  id: string;
  arch: Arch;
  phase: VmPhase;
}

export interface DriverCapabilities {
  /** Guest architectures this host can run, and how. */
  arches: { arch: Arch; accel: 'kvm' | 'tcg' | 'none'; note?: string }[];
  cpus: number;
  memoryBytes: number;
  diskFreeBytes: number;
}

/**
 * Warm starts, for drivers that keep snapshots (the QEMU driver with a snapshot store): what the agent's
 * planner (src/agent/snapshots.ts) uses to build snapshots ahead of need. `spec.job` is not used.
 */
export interface SnapshotPort {
  readonly budgetBytes: number;
  /** Disk the store's snapshots take now. */
  usedBytes(): number;
  /** The snapshot this spec's image and shape would restore from (cheap checks only), or undefined. */
  find(spec: VmSpec): { bytes: number } | undefined;
  /** Builds it now (a template VM that runs no job); undefined if another builder holds it. Throws if the build fails. */
  build(spec: VmSpec, signal?: AbortSignal): Promise<{ bytes: number } | undefined>;
  /** Calls `cb` when the driver drops a snapshot (a restore from it failed): the planner looks again. */
  onDrop(cb: () => void): void;
}

export interface VmDriver {
  readonly name: string;
  /** Present when the driver restores VMs from snapshots. */
  readonly snapshots?: SnapshotPort;
  capabilities(): Promise<DriverCapabilities>;
  /** Starts a VM and returns once it is launched; output streams to `out` as the guest produces it. */
  start(spec: VmSpec, out: VmOutput): Promise<RunningVm>;
  /** VMs this driver instance runs now. */
  list(): VmInfo[];
  /** Removes what earlier, dead instances left behind (processes, cgroups, sockets, disks). */
  sweep(): Promise<{ removed: string[] }>;
}
