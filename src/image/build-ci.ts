/**
 * The full CI guest image: a Debian root file system (debootstrap, from the host's Debian mirror) with
 * Docker, containerd, buildah, git and a compiler, on a read-only ext4 disk (stored as qcow2; each VM boots
 * it under its own copy-on-write overlay), plus Debian's cloud kernel and a busybox initramfs whose /init
 * (kiln-stage1) mounts that disk and switches to kiln-init on it. kiln-init's ci hooks (guest/ci-boot.sh)
 * start Docker before the guest answers READY. Foreign architectures are built through qemu-user-static.
 *
 * Reproducibility: file times are set to SOURCE_DATE_EPOCH (default: the Date of the suite's Release
 * file), logs, caches and apt lists are removed, /etc/shadow's change dates set to that day, and the ext4 UUID, hash seed and superblock times are
 * fixed. Inode change and creation times are then set to the same epoch with debugfs. What remains
 * outside kiln's control is listed in docs/ARCHITECTURE.md ("Guest images").
 */
import { createHash } from 'node:crypto';
import {
  chmodSync,
  cpSync,
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
  lutimesSync,
} from 'node:fs';
import { join } from 'node:path';
import { archFromNode, type Arch } from '../core/arch.ts';
import { KilnError } from '../core/errors.ts';
import { formatSize } from '../core/sizes.ts';
import { REGISTRY_ADDRESS_PLACEHOLDER, REGISTRY_NAME_PLACEHOLDER, renderGuestMirrorConfigs, renderGuestRegistryMirror } from '../oci/mirror-config.ts';
import { pickDebianSource, type DebianSource } from './apt-sources.ts';
import { guestFile, type BuildOptions } from './build-minimal.ts';
import { cloneFixBinary } from './guest-helper.ts';
import { writeCpio } from './cpio.ts';
import { debVersion, downloadDeb, resolveKernelPackage, runCommand, unpackKernel } from './debian.ts';
import { initramfsEntries, resolveGuestModules } from './initramfs.ts';
import { sha256File, type ImageManifest } from './store.ts';
import { fetchRunnerTarball, installActionsRunner } from './actions-runner.ts';

/** What the ci image adds to debootstrap's minbase. */
export const CI_PACKAGES = [
  'docker.io',
  'containerd',
  'runc',
  'buildah',
  // buildah's containers-common needs a container-network-stack, a virtual package debootstrap cannot pick.
  'containernetworking-plugins',
  'git',
  'curl',
  'ca-certificates',
  'build-essential',
  'iproute2',
  'iptables',
  'kmod',
  'procps',
  'busybox-static',
];

/** Placeholder address the mirror configs are rendered with at build time; the guest puts the real one in. */
export const MIRROR_PLACEHOLDER = 'kiln-mirror-placeholder:65535';

const MiB = 1024 * 1024;

/** Printed after every ci build, and explained in docs/ARCHITECTURE.md ("Guest images"). */
export const CI_REPRODUCIBILITY_NOTE =
  'same Debian package versions, kernel and kiln files give the same digest on the same host (file and inode times, ext4 UUID and hash seed are fixed); ' +
  'a newer package in the archive changes it by design, and mkfs.ext4 lays files out in the host file system\'s directory order, so another host may produce a different digest';

export interface CiBuildOptions extends BuildOptions {
  /** Overrides the host's apt sources (tests, offline mirrors). */
  source?: DebianSource;
  /** Makes the runner profile: the ci image plus the GitHub Actions runner from this release tarball. */
  runner?: { source: string; sha256: string };
}

/**
 * What the Actions runner (a .NET program) needs beyond the ci image, per Debian suite: ICU, Kerberos,
 * OpenSSL, zlib and LTTng (the list of the runner's own bin/installdependencies.sh).
 */
const RUNNER_PACKAGES: Record<string, string[]> = {
  bookworm: ['libicu72', 'libkrb5-3', 'zlib1g', 'libssl3', 'liblttng-ust1'],
  trixie: ['libicu76', 'libkrb5-3', 'zlib1g', 'libssl3t64', 'liblttng-ust1t64'],
};

export function runnerPackages(suite: string): string[] {
  const p = RUNNER_PACKAGES[suite];
  if (!p) {
    throw new KilnError('image.unsupported_suite', `kiln does not know the Actions runner's dependencies on Debian "${suite}"`, {
      hint: `build on a host whose apt sources use one of: ${Object.keys(RUNNER_PACKAGES).join(', ')}`,
    });
  }
  return p;
}

/** Release tarballs are named actions-runner-linux-<x64|arm64>-<version>.tar.gz; both parts are checked when present. */
export function runnerTarballInfo(source: string, arch: Arch): { version?: string } {
  const m = /actions-runner-linux-([a-z0-9]+)-(\d+\.\d+\.\d+)\.tar\.gz$/.exec(source.replace(/[?#].*$/, ''));
  if (!m) return {};
  const want = arch === 'amd64' ? 'x64' : 'arm64';
  if (m[1] !== want) {
    throw new KilnError('input.runner_arch', `${source} is the ${m[1]} runner, not the one for ${arch} (${want})`, {
      hint: `use actions-runner-linux-${want}-${m[2]}.tar.gz for an ${arch} image`,
    });
  }
  return { version: m[2]! };
}

export function hostDebianSource(): DebianSource {
  const files: [string, string][] = [];
  const read = (p: string) => {
    try {
      files.push([p, readFileSync(p, 'utf8')]);
    } catch {
      /* absent */
    }
  };
  read('/etc/apt/sources.list');
  const dir = '/etc/apt/sources.list.d';
  if (existsSync(dir)) for (const f of readdirSync(dir).sort()) if (f.endsWith('.list') || f.endsWith('.sources')) read(join(dir, f));
  const s = pickDebianSource(files);
  if (!s) {
    throw new KilnError('image.no_debian_source', 'cannot find a Debian archive in this host\'s apt sources (/etc/apt/sources.list, /etc/apt/sources.list.d/)', {
      hint: 'add a "deb http://deb.debian.org/debian bookworm main" source, or build on a Debian host',
    });
  }
  return s;
}

/** Registers qemu-user-static for a foreign guest architecture (binfmt_misc), so debootstrap can configure its packages. */
async function ensureForeignExec(arch: Arch, progress: (l: string) => void): Promise<void> {
  if (archFromNode(process.arch) === arch) return;
  const qemuName = arch === 'arm64' ? 'qemu-aarch64' : 'qemu-x86_64';
  const dir = '/proc/sys/fs/binfmt_misc';
  if (!existsSync(join(dir, 'register'))) {
    progress('mounting binfmt_misc');
    await runCommand('mount', ['-t', 'binfmt_misc', 'binfmt_misc', dir]);
  }
  if (!existsSync(join(dir, qemuName))) {
    progress(`registering ${qemuName} with binfmt_misc`);
    await runCommand('update-binfmts', ['--enable', qemuName]).catch(() => undefined);
  }
  if (!existsSync(join(dir, qemuName))) {
    throw new KilnError('image.no_foreign_exec', `this host cannot run ${arch} programs, which building an ${arch} root file system needs`, {
      hint: `install qemu-user-static and binfmt-support (\`kiln setup\`), then check \`update-binfmts --display ${qemuName}\``,
    });
  }
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Removes build directories that an interrupted build left (its process is gone), unmounting whatever
 * debootstrap had mounted in them first. Directories of live builds are left alone.
 */
export async function sweepStaleBuilds(cacheDir: string, progress: (l: string) => void): Promise<string[]> {
  const removed: string[] = [];
  for (const name of readdirSync(cacheDir).sort()) {
    if (!name.startsWith('build-ci-')) continue;
    const dir = join(cacheDir, name);
    let pid = 0;
    try {
      pid = Number(readFileSync(join(dir, 'owner.pid'), 'utf8').trim()) || 0;
    } catch {
      /* no owner file: a build that is only now starting, or a very old one */
    }
    if (pid > 0 ? pidAlive(pid) : Date.now() - statSync(dir).mtimeMs < 3_600_000) continue;
    progress(`removing ${name}, left by an interrupted build`);
    await unmountAll(dir);
    rmSync(dir, { recursive: true, force: true });
    removed.push(dir);
  }
  return removed;
}

/** Mount points under `root` (debootstrap mounts /proc and /sys in the target; a failed run can leave them). */
function mountsUnder(root: string): string[] {
  let text = '';
  try {
    text = readFileSync('/proc/self/mountinfo', 'utf8');
  } catch {
    return [];
  }
  return text
    .split('\n')
    .map((l) => l.split(' ')[4] ?? '')
    .map((p) => p.replace(/\\040/g, ' '))
    .filter((p) => p === root || p.startsWith(`${root}/`))
    .sort((a, b) => b.length - a.length);
}

async function unmountAll(root: string): Promise<void> {
  for (const m of mountsUnder(root)) await runCommand('umount', ['-l', m]);
  const left = mountsUnder(root);
  if (left.length > 0) {
    throw new KilnError('image.mounts_left', `cannot unmount ${left.join(', ')}; not removing the build directory`, { hint: `unmount them by hand and remove ${root}`, kind: 'internal' });
  }
}

function releaseEpoch(root: string): number | undefined {
  const lists = join(root, 'var', 'lib', 'apt', 'lists');
  if (!existsSync(lists)) return undefined;
  for (const f of readdirSync(lists).sort()) {
    if (!/_(In)?Release$/.test(f)) continue;
    const m = /^Date:\s*(.+)$/m.exec(readFileSync(join(lists, f), 'utf8'));
    const t = m ? Date.parse(m[1]!) : NaN;
    if (Number.isFinite(t)) return Math.floor(t / 1000);
  }
  return undefined;
}

/**
 * Sets every account's "last password change" (the third field of /etc/shadow, in days since 1970) to the
 * build's epoch. useradd writes the day it ran there, so a build on another day had another root disk.
 */
export function fixShadowDates(root: string, epoch: number): void {
  const file = join(root, 'etc', 'shadow');
  if (!existsSync(file)) return;
  const day = String(Math.floor(epoch / 86_400));
  const lines = readFileSync(file, 'utf8').split('\n');
  const fixed = lines.map((line) => {
    const fields = line.split(':');
    if (fields.length < 3 || fields[2] === '') return line;
    fields[2] = day;
    return fields.join(':');
  });
  const mode = statSync(file).mode & 0o7777;
  writeFileSync(file, fixed.join('\n'));
  chmodSync(file, mode);
}

/** Removes what differs from build to build without meaning anything in a guest. */
function scrubRoot(root: string, epoch: number): void {
  const emptyDir = (rel: string, keep: (name: string) => boolean = () => false) => {
    const d = join(root, rel);
    if (!existsSync(d)) return;
    for (const f of readdirSync(d)) if (!keep(f)) rmSync(join(d, f), { recursive: true, force: true });
  };
  const rmFiles = (rel: string, match: RegExp) => {
    const d = join(root, rel);
    if (!existsSync(d)) return;
    for (const f of readdirSync(d)) if (match.test(f)) rmSync(join(d, f), { recursive: true, force: true });
  };
  emptyDir('var/lib/apt/lists', (f) => f === 'partial' || f === 'lock');
  emptyDir('var/cache/apt/archives', (f) => f === 'partial' || f === 'lock');
  rmFiles('var/cache/apt', /\.bin$/);
  rmFiles('var/cache/debconf', /-old$/);
  rmFiles('var/lib/dpkg', /-old$/);
  rmFiles('etc', /^(passwd|group|shadow|gshadow|subuid|subgid)-$/);
  rmFiles('var/cache/ldconfig', /^aux-cache$/);
  emptyDir('var/log');
  emptyDir('var/tmp');
  emptyDir('tmp');
  for (const d of ['usr/share/doc', 'usr/share/man', 'usr/share/info', 'usr/share/locale']) emptyDir(d);
  fixShadowDates(root, epoch);
  writeFileSync(join(root, 'etc', 'machine-id'), '');
  rmSync(join(root, 'var', 'lib', 'dbus', 'machine-id'), { force: true });
  writeFileSync(join(root, 'etc', 'hostname'), 'kiln\n');
  writeFileSync(join(root, 'etc', 'hosts'), '127.0.0.1\tlocalhost\n127.0.1.1\tkiln\n::1\tlocalhost ip6-localhost ip6-loopback\n');
  // QEMU user networking's DNS forwarder (reachable with --network user).
  rmSync(join(root, 'etc', 'resolv.conf'), { force: true });
  writeFileSync(join(root, 'etc', 'resolv.conf'), 'nameserver 10.0.2.3\n');
}

/** Sets every file's times to `epoch`; returns the bytes the tree occupies and its directories (relative, '/' first). */
function fixTimes(root: string, epoch: number): { bytes: number; dirs: string[] } {
  let bytes = 0;
  const dirs: string[] = [];
  const visit = (p: string, rel: string) => {
    const st = lstatSync(p);
    bytes += st.blocks * 512;
    if (st.isDirectory()) {
      dirs.push(rel || '/');
      for (const e of readdirSync(p).sort()) visit(join(p, e), `${rel}/${e}`);
    }
    lutimesSync(p, epoch, epoch);
  };
  visit(root, '');
  return { bytes, dirs };
}

function installKilnFiles(root: string, profile: 'ci' | 'runner', arch: Arch): void {
  const kilnDir = join(root, 'etc', 'kiln');
  mkdirSync(kilnDir, { recursive: true });
  writeFileSync(join(root, 'usr', 'sbin', 'kiln-init'), readFileSync(guestFile('kiln-init')), { mode: 0o755 });
  chmodSync(join(root, 'usr', 'sbin', 'kiln-init'), 0o755);
  writeFileSync(join(root, 'usr', 'sbin', 'kiln-clone-fix'), cloneFixBinary(arch), { mode: 0o755 });
  chmodSync(join(root, 'usr', 'sbin', 'kiln-clone-fix'), 0o755);
  writeFileSync(join(kilnDir, 'boot.sh'), readFileSync(guestFile('ci-boot.sh')), { mode: 0o644 });
  writeFileSync(join(kilnDir, 'after-job.sh'), readFileSync(guestFile('ci-after-job.sh')), { mode: 0o644 });
  writeFileSync(join(kilnDir, 'profile'), `${profile}\n`);
  const mirror = renderGuestMirrorConfigs({ address: MIRROR_PLACEHOLDER, fallbackToUpstream: true });
  for (const f of mirror.files) {
    const target = join(kilnDir, 'mirror', f.path);
    mkdirSync(join(target, '..'), { recursive: true });
    writeFileSync(target, f.content, { mode: f.mode });
  }
  // Templates for mirrors of other registries (ghcr.io, quay.io): ci-boot.sh fills in the name and address of
  // each `kiln.mirror.<registry>=<address>` word (paths included), appends the BuildKit part, and adds the
  // /etc/hosts line and Docker's insecure-registries entry the renderer describes.
  const other = renderGuestRegistryMirror({ registry: REGISTRY_NAME_PLACEHOLDER, address: REGISTRY_ADDRESS_PLACEHOLDER });
  for (const f of other.files) {
    const target = join(kilnDir, 'mirror-registry', f.path);
    mkdirSync(join(target, '..'), { recursive: true });
    writeFileSync(target, f.content, { mode: f.mode });
  }
  writeFileSync(join(kilnDir, 'mirror-registry.buildkitd.toml'), other.buildkitdToml, { mode: 0o644 });
}

/** A UUID (RFC 4122 layout, version 5 style bits) derived from `seed`, so mkfs gets the same one for the same inputs. */
function uuidFrom(seed: string): string {
  const h = createHash('sha256').update(seed).digest();
  h[6] = (h[6]! & 0x0f) | 0x50;
  h[8] = (h[8]! & 0x3f) | 0x80;
  const x = h.subarray(0, 16).toString('hex');
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20, 32)}`;
}

async function must(what: string, r: Promise<{ code: number; stderr: string; stdout: string }>, hint: string): Promise<string> {
  const res = await r;
  if (res.code !== 0) {
    const tail = `${res.stderr}\n${res.stdout}`.trim().split('\n').slice(-4).join(' | ');
    throw new KilnError('image.build_step_failed', `${what} failed (exit ${res.code}): ${tail}`, { hint });
  }
  return res.stdout;
}

/** Turns debootstrap's per-package lines into a progress line per phase and every 25 packages. */
function debootstrapProgress(progress: (l: string) => void): (line: string) => void {
  let phase = '';
  let count = 0;
  return (line) => {
    const m = /^I: (\S+)/.exec(line);
    if (!m) {
      if (/^(W|E):/.test(line)) progress(`debootstrap: ${line}`);
      return;
    }
    const p = m[1]!;
    if (p !== phase) {
      phase = p;
      count = 0;
      progress(`debootstrap: ${line.slice(3)}`);
    } else if (++count % 25 === 0) progress(`debootstrap: ${line.slice(3)}`);
  };
}

export async function buildCiImage(opts: CiBuildOptions): Promise<ImageManifest> {
  const { arch, store, progress } = opts;
  if (process.getuid?.() !== 0) {
    throw new KilnError('image.needs_root', 'building the ci image needs root (debootstrap installs packages into a chroot)', {
      hint: `run \`sudo kiln image build --profile ${opts.runner ? 'runner' : 'ci'}\` (with the same flags)`,
    });
  }
  const profile = opts.runner ? 'runner' : 'ci';
  const runnerInfo = opts.runner ? runnerTarballInfo(opts.runner.source, arch) : undefined;
  const source = opts.source ?? hostDebianSource();
  const include = [...CI_PACKAGES, ...(opts.runner ? runnerPackages(source.suite) : [])];
  progress(`Debian ${source.suite} from ${source.uri} for ${arch}${opts.runner ? `, with the Actions runner${runnerInfo?.version ? ` ${runnerInfo.version}` : ''}` : ''}`);
  // A bad tarball or checksum should fail before minutes of debootstrap, not after.
  const runnerTarball = opts.runner ? await fetchRunnerTarball({ ...opts.runner, cacheDir: join(opts.cacheDir, 'runner'), progress }) : undefined;
  await ensureForeignExec(arch, progress);
  const kernelPkg = await resolveKernelPackage(arch);
  const kernelDeb = await downloadDeb(kernelPkg, arch, join(opts.cacheDir, 'debs', arch), progress);

  mkdirSync(opts.cacheDir, { recursive: true });
  await sweepStaleBuilds(opts.cacheDir, progress);
  const work = mkdtempSync(join(opts.cacheDir, 'build-ci-'));
  writeFileSync(join(work, 'owner.pid'), String(process.pid));
  const root = join(work, 'root');
  const staging = store.stagingDir();
  const t0 = Date.now();
  const secs = () => `${((Date.now() - t0) / 1000).toFixed(0)}s`;
  try {
    const { vmlinuzPath, kernelVersion, modRoot } = await unpackKernel(kernelDeb, kernelPkg, join(work, 'kernel'), progress);

    const debCache = join(opts.cacheDir, 'debootstrap', arch);
    mkdirSync(debCache, { recursive: true });
    progress(`debootstrap ${source.suite} (${arch}, minbase + ${include.length} packages; ${arch === archFromNode(process.arch) ? 'about a minute' : 'several minutes through emulation'})`);
    try {
      await must(
        'debootstrap',
        runCommand(
          'debootstrap',
          [`--arch=${arch}`, '--variant=minbase', `--include=${include.join(',')}`, '--components=main', `--cache-dir=${debCache}`, source.suite, root, source.uri],
          { onLine: debootstrapProgress(progress) },
        ),
        `check that ${source.uri} is reachable and has ${source.suite} for ${arch}; debootstrap's log is kept in ${join(opts.cacheDir, `debootstrap-${arch}.log`)}`,
      );
    } catch (e) {
      const log = join(root, 'debootstrap', 'debootstrap.log');
      if (existsSync(log)) cpSync(log, join(opts.cacheDir, `debootstrap-${arch}.log`));
      throw e;
    } finally {
      await unmountAll(root);
    }
    progress(`debootstrap done (${secs()})`);

    const epoch = process.env.SOURCE_DATE_EPOCH && /^\d+$/.test(process.env.SOURCE_DATE_EPOCH) ? Number(process.env.SOURCE_DATE_EPOCH) : (releaseEpoch(root) ?? 1_700_000_000);
    const packages = (
      await must('dpkg-query', runCommand('dpkg-query', [`--admindir=${join(root, 'var', 'lib', 'dpkg')}`, '-W', '-f', '${Package}=${Version}\\n']), 'check the root file system')
    )
      .split('\n')
      .filter(Boolean)
      .sort();

    progress(`installing kernel modules (${kernelVersion}) and kiln-init`);
    cpSync(modRoot, join(root, 'lib', 'modules', kernelVersion), { recursive: true });
    // The root's own depmod (kmod is in CI_PACKAGES), through emulation for a foreign architecture.
    await must('depmod', runCommand('chroot', [root, '/usr/sbin/depmod', '-a', kernelVersion]), 'check that the root file system has kmod');
    installKilnFiles(root, profile, arch);
    if (opts.runner && runnerTarball) {
      progress('installing the Actions runner');
      await installActionsRunner({ rootDir: root, source: runnerTarball, sha256: opts.runner.sha256, cacheDir: join(opts.cacheDir, 'runner') });
      packages.push(`actions-runner=${runnerInfo?.version ?? 'unknown'}+sha256.${opts.runner.sha256.toLowerCase()}`);
    }
    scrubRoot(root, epoch);
    const { bytes: used, dirs } = fixTimes(root, epoch);

    // Room for what jobs install into the root (their own overlay); Docker's data goes to the scratch disk.
    const size = Math.ceil((used * 1.2 + 1024 * MiB) / (64 * MiB)) * 64 * MiB;
    const uuid = uuidFrom(`kiln-${profile}-root ${arch} ${kernelVersion} ${packages.join(' ')}`);
    const raw = join(work, 'root.raw');
    progress(`making the ext4 root disk (${formatSize(size)}, ${formatSize(used)} used)`);
    writeFileSync(raw, '');
    await must(
      'mkfs.ext4',
      runCommand(
        'mkfs.ext4',
        ['-q', '-F', '-t', 'ext4', '-L', 'kiln-root', '-U', uuid, '-m', '0', '-I', '256', '-E', `hash_seed=${uuid},lazy_itable_init=0,lazy_journal_init=0,root_owner=0:0,nodiscard`, '-d', root, raw, `${size / 1024}k`],
        { env: { E2FSPROGS_FAKE_TIME: String(epoch) } },
      ),
      'install e2fsprogs 1.43 or newer (`mkfs.ext4 -d`)',
    );
    await fixInodeTimes(raw, dirs, epoch, progress);
    progress('converting the root disk to qcow2');
    await must('qemu-img convert', runCommand('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, join(staging, 'root.qcow2')]), 'install qemu-utils');
    rmSync(raw, { force: true });

    progress('assembling the initramfs');
    const modules = resolveGuestModules(modRoot, kernelPkg);
    const entries = initramfsEntries({
      busybox: readFileSync(join(root, 'usr', 'bin', 'busybox')),
      init: readFileSync(guestFile('kiln-stage1')),
      modRoot,
      modules,
      kernelVersion,
      extra: [{ type: 'dir', path: 'newroot' }],
    });
    writeFileSync(join(staging, 'initrd.cpio'), writeCpio(entries));
    writeFileSync(join(staging, 'vmlinuz'), readFileSync(vmlinuzPath));
    for (const f of ['vmlinuz', 'initrd.cpio', 'root.qcow2']) chmodSync(join(staging, f), 0o444);
    progress('hashing');
    const file = async (name: string) => ({ name, sha256: await sha256File(join(staging, name)), size: statSync(join(staging, name)).size });
    return store.commit(staging, {
      arch,
      profile,
      kernelVersion,
      packages: [`${kernelPkg}=${await debVersion(kernelDeb)}`, ...packages],
      created: new Date().toISOString(),
      kernel: await file('vmlinuz'),
      initrd: await file('initrd.cpio'),
      rootDisk: await file('root.qcow2'),
    });
  } catch (e) {
    rmSync(staging, { recursive: true, force: true });
    throw e;
  } finally {
    await unmountAll(root).catch(() => undefined);
    if (mountsUnder(root).length === 0) rmSync(work, { recursive: true, force: true });
  }
}

/**
 * mkfs.ext4 -d copies each file's change time from the host (which no one can set) and stamps creation
 * times with the clock; set both to `epoch` on every inode in use, through debugfs, so they depend on the
 * inputs only. The inodes in use are read back from the new file system's directories.
 */
async function fixInodeTimes(raw: string, dirs: string[], epoch: number, progress: (l: string) => void): Promise<void> {
  progress('fixing inode times');
  const quote = (p: string) => `"${p.replace(/(["\\])/g, '\\$1')}"`;
  const script = `${raw}.debugfs`;
  try {
    writeFileSync(script, dirs.map((d) => `ls -p ${quote(d)}\n`).join(''));
    const listing = await must('debugfs', runCommand('debugfs', ['-f', script, raw]), 'install e2fsprogs');
    const inodes = new Set<number>();
    for (const line of listing.split('\n')) {
      const m = /^\/(\d+)\//.exec(line);
      if (m) inodes.add(Number(m[1]));
    }
    if (inodes.size < dirs.length) throw new KilnError('image.build_step_failed', `debugfs listed ${inodes.size} inodes for ${dirs.length} directories`, { kind: 'internal' });
    const stamp = new Date(epoch * 1000).toISOString().replace(/[-:T]/g, '').slice(0, 14);
    const lines: string[] = [];
    for (const i of [...inodes].sort((a, b) => a - b)) lines.push(`sif <${i}> ctime ${stamp}`, `sif <${i}> ctime_extra 0`, `sif <${i}> crtime ${stamp}`, `sif <${i}> crtime_extra 0`);
    writeFileSync(script, `${lines.join('\n')}\n`);
    await must('debugfs', runCommand('debugfs', ['-w', '-f', script, raw], { env: { E2FSPROGS_FAKE_TIME: String(epoch) } }), 'install e2fsprogs');
  } finally {
    rmSync(script, { force: true });
  }
}
