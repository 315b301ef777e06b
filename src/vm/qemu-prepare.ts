/**
 * QEMU VM lifecycle, step 1 (prepare): the spec checked, the VM directory, the unix sockets QEMU connects to,
 * the image verified against its digest (its seal), copy-on-write disks (on the image, or on a warm-start
 * snapshot's saved overlays) and the VM's cgroup. Nothing runs yet.
 */
import { createServer, type Server, type Socket } from 'node:net';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { cpus as osCpus, totalmem } from 'node:os';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { KilnError } from '../core/errors.ts';
import { formatSize } from '../core/sizes.ts';
import { createVmCgroup, type CgroupLayout, type VmCgroup } from './cgroups.ts';
import { isValidEnvName } from './channel.ts';
import { checkDiskSpace, createOverlay, ensureScratchBase } from './disks.ts';
import type { VmSpec } from './driver.ts';
import { forwardSocketPath, listenForward } from './forwards.ts';
import { parseAllowEntry } from './egress.ts';
import { currentOwner } from './process.ts';
import { checkSealed } from './seal.ts';

const MiB = 1024 * 1024;

export interface VmSocketPaths {
  qmp: string;
  ctl: string;
  stdout: string;
  stderr: string;
}

/** What a VM holds on the host; filled in as preparation goes, so teardown can undo a partial one. */
export interface VmHostResources {
  vmDir: string;
  servers: Server[];
  cgroup?: VmCgroup;
  /** Set once the VM's egress chain is installed (its `<id>.<tag>` name). */
  egressName?: string;
}

export interface PreparedVm {
  host: VmHostResources;
  paths: VmSocketPaths;
  /** Resolves with QEMU's connection on each socket. */
  accepted: Record<keyof VmSocketPaths, Promise<Socket>>;
  cgroup: VmCgroup;
  scratchDisk: string;
  /** Set when the image has a root disk: this VM's overlay on it. */
  rootOverlay?: string;
}

/** Refuses a spec the driver cannot run, with a message the user can act on. */
export function validateVmSpec(spec: VmSpec, exists: (id: string) => boolean): void {
  if (!/^[A-Za-z0-9_-]{1,40}$/.test(spec.id)) {
    throw new KilnError('vm.bad_id', `VM id "${spec.id}" must be 1-40 letters, digits, '-' or '_'`, { kind: 'internal' });
  }
  if (exists(spec.id)) throw new KilnError('vm.exists', `a VM with id ${spec.id} already exists`, { kind: 'internal' });
  const hostCpus = osCpus().length;
  if (!Number.isInteger(spec.cpus) || spec.cpus < 1 || spec.cpus > hostCpus) {
    throw new KilnError('input.too_many_cpus', `--cpus ${spec.cpus} is not possible on this host: it has ${hostCpus} CPUs`, {
      hint: `ask for 1 to ${hostCpus} CPUs`,
    });
  }
  const maxMem = totalmem() - 256 * MiB;
  if (spec.memoryBytes < 64 * MiB || spec.memoryBytes > maxMem) {
    throw new KilnError('input.bad_memory', `--memory ${formatSize(spec.memoryBytes)} is not possible on this host (${formatSize(totalmem())} in all)`, {
      hint: `ask for between 64M and ${formatSize(Math.floor(maxMem / MiB) * MiB)}`,
    });
  }
  if (spec.diskBytes < 64 * MiB) throw new KilnError('input.bad_disk', `--disk ${formatSize(spec.diskBytes)} is too small`, { hint: 'ask for at least 64M' });
  if (spec.arch !== spec.image.arch) {
    throw new KilnError('input.image_arch_mismatch', `image ${spec.image.digest.slice(7, 19)} is for ${spec.image.arch}, not ${spec.arch}`, {
      hint: `use an ${spec.arch} image (\`kiln image ls\`) or drop --image`,
    });
  }
  for (const k of Object.keys(spec.job.env)) {
    if (!isValidEnvName(k)) throw new KilnError('input.bad_env', `environment variable name "${k}" is not valid`, { hint: 'use letters, digits and _, not starting with a digit' });
  }
  if (spec.registryMirror !== undefined && !/^[A-Za-z0-9.-]+:[0-9]{1,5}$/.test(spec.registryMirror)) {
    throw new KilnError('input.bad_registry_mirror', `registry mirror "${spec.registryMirror}" is not host:port`, { hint: 'e.g. 10.0.2.100:5000 (the address as the guest reaches it)' });
  }
  for (const m of spec.registryMirrors ?? []) {
    if (!/^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)+$/.test(m.registry) || m.registry.length > 200 || !/^[0-9]{1,3}(?:\.[0-9]{1,3}){3}:[0-9]{1,5}$/.test(m.address)) {
      throw new KilnError('input.bad_registry_mirror', `registry mirror ${m.registry}=${m.address} is not a registry name and an IP:port`, { hint: 'e.g. ghcr.io and 10.0.2.101:5000 (the address as the guest reaches it)' });
    }
  }
  for (const f of spec.forwards ?? []) {
    if (!Number.isInteger(f.hostPort) || f.hostPort < 1 || f.hostPort > 65535 || !Number.isInteger(f.guestPort) || f.guestPort < 1 || f.guestPort > 65535 || !/^10\.0\.2\.[0-9]{1,3}$/.test(f.guestAddr)) {
      throw new KilnError('vm.bad_forward', `forward ${f.guestAddr}:${f.guestPort} -> 127.0.0.1:${f.hostPort} is not valid`, { kind: 'internal', hint: 'forwards go from a 10.0.2.x address to a host port (1-65535)' });
    }
  }
  for (const a of spec.egress?.allow ?? []) parseAllowEntry(a);
  if (spec.cacheDisk !== undefined && (!spec.cacheDisk.startsWith('/') || /[,\s'"\\]/.test(spec.cacheDisk) || !existsSync(spec.cacheDisk))) {
    throw new KilnError('vm.bad_cache_disk', `the cache disk ${spec.cacheDisk} is missing, not absolute, or has a comma, space or quote`, { kind: 'internal' });
  }
  if (spec.job.command.length === 0 || spec.job.command[0] === '') {
    throw new KilnError('input.no_command', 'no command to run', { hint: 'put the command after --, e.g. `kiln run -- uname -a`' });
  }
  if (spec.job.command[0]!.includes('=')) {
    throw new KilnError('input.bad_command', `the command name "${spec.job.command[0]}" contains '='`, { hint: 'run it through a shell: -- sh -c "…"' });
  }
}

/** Makes the VM directory and names its sockets; refuses a data directory too deep for unix socket paths. */
export function makeVmDir(vmsDir: string, id: string): { host: VmHostResources; paths: VmSocketPaths } {
  const vmDir = join(vmsDir, id);
  const paths: VmSocketPaths = {
    qmp: join(vmDir, 'qmp.sock'),
    ctl: join(vmDir, 'ctl.sock'),
    stdout: join(vmDir, 'out.sock'),
    stderr: join(vmDir, 'err.sock'),
  };
  if (paths.stdout.length > 100 || /[,\s'"\\]/.test(vmDir)) {
    throw new KilnError('vm.path_too_long', `the data directory path is too long for unix sockets, or has a comma, space or quote (${vmDir})`, { hint: 'use a shorter --data-dir / KILN_DATA_DIR' });
  }
  mkdirSync(vmsDir, { recursive: true });
  mkdirSync(vmDir);
  writeFileSync(join(vmDir, 'owner.json'), JSON.stringify(currentOwner()));
  return { host: { vmDir, servers: [] }, paths };
}

export interface PrepareOptions {
  dataDir: string;
  disksDir: string;
  layout: CgroupLayout;
  cgroupName: string;
  memoryOverheadBytes: number;
  /** The VM also gets a cgroup v2 directory, for the egress filter's match. */
  netCgroup: boolean;
  /** A warm start: the snapshot's directory, whose saved disk overlays this VM's overlays go on (image already verified). */
  snapshotDir?: string;
  log: Logger | undefined;
}

/** Listens on the VM's sockets, verifies the image, makes the disks and the cgroup. Throws after partial work: tear `host` down. */
export async function prepareVm(spec: VmSpec, host: VmHostResources, paths: VmSocketPaths, o: PrepareOptions): Promise<PreparedVm> {
  const accepted = {} as Record<keyof VmSocketPaths, Promise<Socket>>;
  for (const [i, f] of (spec.forwards ?? []).entries()) host.servers.push(await listenForward(forwardSocketPath(host.vmDir, i), f.hostPort));
  for (const [name, p] of Object.entries(paths) as [keyof VmSocketPaths, string][]) {
    const server = createServer();
    host.servers.push(server);
    accepted[name] = new Promise((resolve) => server.once('connection', resolve));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(p, resolve);
    });
  }
  if (o.layout.problems.length > 0) o.log?.warn({ problems: o.layout.problems }, 'VM resource limits are partly unavailable');
  checkDiskSpace(o.dataDir, spec.diskBytes);
  const scratchDisk = join(host.vmDir, 'scratch.qcow2');
  const rootOverlay = spec.image.rootDiskPath ? join(host.vmDir, 'root.qcow2') : undefined;
  const snap = o.snapshotDir;
  await Promise.all([
    // A warm VM's disks are new copy-on-write overlays on the snapshot's saved (read-only) overlays.
    snap
      ? createOverlay(scratchDisk, join(snap, 'scratch.qcow2'), 'qcow2')
      : verifyImage(spec).then(() => ensureScratchBase(o.disksDir, spec.diskBytes)).then((base) => createOverlay(scratchDisk, base, 'raw', spec.diskBytes)),
    spec.image.rootDiskPath && rootOverlay ? createOverlay(rootOverlay, snap ? join(snap, 'root.qcow2') : spec.image.rootDiskPath, 'qcow2') : undefined,
  ]);
  const cgroup = createVmCgroup(o.layout, o.cgroupName, { cpus: spec.cpus, memoryBytes: spec.memoryBytes + o.memoryOverheadBytes, pids: 128 + 2 * spec.cpus }, o.netCgroup);
  host.cgroup = cgroup;
  return { host, paths, accepted, cgroup, scratchDisk, ...(rootOverlay ? { rootOverlay } : {}) };
}

/** Checks the image's files against their digests (a stat check against their seal; hashed again only if changed). */
export async function verifyImage(spec: VmSpec): Promise<void> {
  const verify = async (path: string, want: string, what: string) => {
    let ok: boolean;
    try {
      ok = await checkSealed(path, want);
    } catch (e) {
      throw new KilnError('image.corrupt', `the image's ${what} (${path}) cannot be read`, { cause: e, hint: 'remove the image with `kiln image rm` and build it again' });
    }
    if (!ok) {
      throw new KilnError('image.corrupt', `the image's ${what} does not match its digest (image ${spec.image.digest.slice(7, 19)} is damaged)`, {
        hint: `remove it with \`kiln image rm ${spec.image.digest.slice(7, 19)}\` and build it again (\`kiln image build\`)`,
      });
    }
  };
  await Promise.all([
    verify(spec.image.kernelPath, spec.image.kernelSha256, 'kernel'),
    verify(spec.image.initrdPath, spec.image.initrdSha256, 'initramfs'),
    spec.image.rootDiskPath && spec.image.rootDiskSha256 ? verify(spec.image.rootDiskPath, spec.image.rootDiskSha256, 'root disk') : undefined,
  ]);
}

/** True if a VM directory with this id exists (a VM of this or an earlier kiln). */
export function vmDirExists(vmsDir: string, id: string): boolean {
  return existsSync(join(vmsDir, id));
}
