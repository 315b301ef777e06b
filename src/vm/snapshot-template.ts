/**
 * Warm starts, the host side (docs/ARCHITECTURE.md, "Warm starts"):
 *   template  a VM that never runs a job boots the image, waits for kiln-init's READY (the ci image has
 *             Docker up by then; a "STEP not-ready:<what>" before it fails the build), is stopped and saved with x-ignore-shared: its RAM stays in the RAM file,
 *             the device state goes to `state`, and its two disk overlays are kept as they are.
 *   restore   the same command line with the RAM file mapped privately and `-incoming defer`; QMP loads
 *             the state, waits for `paused`, `cont`; then the per-VM identity goes over kiln.ctl and only
 *             after the guest confirms it does the job (and any secret in it) follow.
 * Measured recipes for QEMU 7.2: ../../shared/research/snapshots.md.
 */
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createServer, type Server, type Socket } from 'node:net';
import { closeSync, mkdirSync, openSync, readFileSync, renameSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { Arch } from '../core/arch.ts';
import { KilnError } from '../core/errors.ts';
import { parseGuestLine, makeLineSplitter } from './channel.ts';
import { createOverlay } from './disks.ts';
import { buildQemuArgs, qemuBinary, type QemuLaunch } from './qemu-args.ts';
import { makeQmp, type Qmp } from './qmp.ts';
import { writeQcow2Overlay } from './qcow2.ts';
import type { SnapshotKey } from './snapshot-store.ts';

/**
 * The kiln-init protocol version restored guests must speak: 2, the identity lines (SEED/CLOCK/HOST/MID/SYNC);
 * 3, the per-VM settings lines (MIRROR) and the image's restore hook (the ci image renews Docker's identity);
 * 4, MIRRORS (the mirrors of other registries, which a guest speaking 3 would silently ignore).
 */
export const WARM_INIT_VERSION = 4;
/** 5: CACHE, the cache disk behind a template's cache slot (asked of snapshots with a cache slot only). */
export const WARM_INIT_VERSION_CACHE = 5;

/** The kiln-init protocol a snapshot's guest must speak: with a cache slot, one that mounts /cache at CACHE. */
export function warmInitVersion(cacheSlot: boolean): number {
  return cacheSlot ? WARM_INIT_VERSION_CACHE : WARM_INIT_VERSION;
}

/**
 * Restored VMs always have a NIC (restricted unless the job asks for a network): the device set must match.
 * A cache slot is the cache disk's device (serial kiln-cache), behind a placeholder in the template.
 */
export function snapshotDevices(hasRootDisk: boolean, cacheSlot = false): string {
  return ['virtio-serial:ctl,stdout,stderr', 'virtio-rng', 'blk:scratch', ...(hasRootDisk ? ['blk:root'] : []), ...(cacheSlot ? ['blk:cache'] : []), 'net:virtio-user'].join(' ');
}

/** The kernel word that tells a template's kiln-init its cache disk is a placeholder, never to be mounted. */
export const CACHE_SLOT_WORD = 'kiln.cache=slot';

const versionCache = new Map<string, { stamp: string; version: string }>();

/**
 * The first line of `qemu-system-* --version`, cached per binary (path, inode, mtime, ctime, size) in
 * memory and in `cacheFile`, so a run does not spawn QEMU just to learn its version.
 */
export function qemuVersion(binPath: string, cacheFile?: string): string {
  const st = statSync(binPath);
  const stamp = `${binPath}:${st.ino}:${st.mtimeMs}:${st.ctimeMs}:${st.size}`;
  const hit = versionCache.get(binPath);
  if (hit?.stamp === stamp) return hit.version;
  let onDisk: Record<string, { stamp: string; version: string }> = {};
  if (cacheFile) {
    try {
      onDisk = JSON.parse(readFileSync(cacheFile, 'utf8')) as typeof onDisk;
    } catch {
      onDisk = {};
    }
    const d = onDisk[binPath];
    if (d?.stamp === stamp && d.version) {
      versionCache.set(binPath, d);
      return d.version;
    }
  }
  const r = spawnSync(binPath, ['--version'], { encoding: 'utf8', timeout: 10_000 });
  const version = (r.stdout ?? '').split('\n')[0]?.trim() ?? '';
  if (!version) throw new KilnError('snapshot.qemu_version', `\`${binPath} --version\` printed nothing`, { kind: 'internal' });
  versionCache.set(binPath, { stamp, version });
  if (cacheFile) {
    try {
      mkdirSync(dirname(cacheFile), { recursive: true });
      writeFileSync(`${cacheFile}.${process.pid}`, JSON.stringify({ ...onDisk, [binPath]: { stamp, version } }));
      renameSync(`${cacheFile}.${process.pid}`, cacheFile);
    } catch {
      /* the in-memory cache still holds */
    }
  }
  return version;
}

export function hostCpuModel(): string {
  try {
    return /^model name\s*:\s*(.+)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1]?.trim() ?? 'unknown';
  } catch {
    return 'unknown';
  }
}

const shellQuote = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`;

export interface TemplateBuild {
  staging: string;
  key: SnapshotKey;
  /** kiln's usual launch for this image and shape; sockets, disks, RAM and network are set here. */
  launch: Omit<QemuLaunch, 'sockets' | 'consoleLog' | 'pidFile' | 'scratchDisk' | 'rootDisk' | 'ramFile' | 'incomingDefer' | 'network'>;
  scratchBase: string;
  rootDiskPath?: string;
  /**
   * A cache slot of this many bytes (key.cacheBytes): the template gets a placeholder cache disk of that size
   * (empty, in staging, not kept), and its launch carries CACHE_SLOT_WORD so its kiln-init leaves it alone.
   */
  cacheBytes?: number;
  bootTimeoutMs: number;
  /** Aborting kills the template VM; the build then fails and leaves nothing behind. */
  signal?: AbortSignal;
}

/** Boots a template VM in `staging` and saves it there (ram, state, scratch.qcow2, root.qcow2). */
export async function buildTemplate(b: TemplateBuild): Promise<void> {
  const p = (n: string) => join(b.staging, n);
  await Promise.all([
    createOverlay(p('scratch.qcow2'), b.scratchBase, 'raw', b.key.diskBytes),
    b.rootDiskPath ? createOverlay(p('root.qcow2'), b.rootDiskPath, 'qcow2') : undefined,
  ]);
  // The cache slot's placeholder: a qcow2 overlay (as a job's cache disk is) on a sparse file of zeros.
  // Its contents never reach a job: a restored VM's cache disk is its own, and kiln-init drops the blocks
  // the kernel read from the placeholder before it mounts that one.
  if (b.cacheBytes !== undefined) {
    closeSync(openSync(p('cache-slot.raw'), 'w', 0o600));
    truncateSync(p('cache-slot.raw'), b.cacheBytes);
    writeQcow2Overlay(p('cache-slot.qcow2'), p('cache-slot.raw'), 'raw', b.cacheBytes);
  }
  const sockets = { qmp: p('q.sock'), ctl: p('c.sock'), stdout: p('o.sock'), stderr: p('e.sock') };
  const servers: Server[] = [];
  const accepted: Record<string, Promise<Socket>> = {};
  for (const [name, path] of Object.entries(sockets)) {
    const server = createServer();
    servers.push(server);
    accepted[name] = new Promise((resolve) => server.once('connection', resolve));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(path, resolve);
    });
  }
  const args = buildQemuArgs({
    ...b.launch,
    sockets,
    consoleLog: p('console.log'),
    pidFile: p('qemu.pid'),
    scratchDisk: p('scratch.qcow2'),
    ...(b.rootDiskPath ? { rootDisk: p('root.qcow2') } : {}),
    ...(b.cacheBytes !== undefined ? { cacheDisk: p('cache-slot.qcow2') } : {}),
    ramFile: { path: p('ram'), shared: true },
    network: { restrict: true, forwards: [] },
  });
  const child = spawn('/bin/sh', ['-c', 'exec setpriv --pdeathsig KILL -- "$@"', 'kiln-template', qemuBinary(b.key.arch), ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr.length < 4096 ? (stderr += d) : undefined));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
  const abort = () => child.kill('SIGKILL');
  if (b.signal?.aborted) abort();
  b.signal?.addEventListener('abort', abort, { once: true });
  const sockList: Socket[] = [];
  for (const a of Object.values(accepted)) void a.then((s) => (sockList.push(s), s.on('error', () => undefined)));
  let qmp: Qmp | undefined;
  try {
    const ready = new Promise<void>((resolve, reject) => {
      void accepted.ctl!.then((s) =>
        s.on(
          'data',
          makeLineSplitter((line) => {
            const m = parseGuestLine(line);
            // An image's boot hook that could not bring up what it starts (the ci image's Docker) says so before
            // READY: a cold boot goes on (the job sees it), a template must not be saved half up.
            if (m.type === 'step' && m.name.startsWith('not-ready:')) {
              reject(new KilnError('snapshot.template_not_ready', `the template VM came up without ${m.name.slice('not-ready:'.length)}`, { kind: 'internal' }));
              return;
            }
            if (m.type !== 'ready') return;
            const version = Number(line.trim().split(/\s+/)[2] ?? 0);
            if (version >= b.key.init) resolve();
            else reject(new KilnError('snapshot.old_init', `the image's kiln-init (protocol ${version || 1}) cannot take ${b.key.init >= WARM_INIT_VERSION_CACHE ? 'a cache disk' : 'a per-VM identity'} after a restore`, { hint: 'rebuild the image with this kiln (`kiln image build`)' }));
          }),
        ),
      );
    });
    const failed = exited.then((code) => {
      throw new KilnError('snapshot.build_failed', `the template VM exited (code ${code ?? 'signal'}) before it was saved${stderr ? `: ${stderr.trim().split('\n').slice(-1)[0]}` : ''}`, { kind: 'internal' });
    });
    const timeout = new Promise<never>((_, reject) => {
      const t = setTimeout(() => reject(new KilnError('snapshot.build_timeout', `the template VM did not become ready within ${Math.round(b.bootTimeoutMs / 1000)}s`, { kind: 'internal' })), b.bootTimeoutMs);
      t.unref();
      void exited.then(() => clearTimeout(t));
    });
    qmp = await Promise.race([accepted.qmp!.then(makeQmp), failed, timeout]);
    await Promise.race([ready, failed, timeout]);
    await qmp.execute('stop');
    await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'x-ignore-shared', state: true }] });
    await qmp.execute('migrate', { uri: `exec:cat > ${shellQuote(p('state'))}` });
    const deadline = Date.now() + 60_000;
    for (;;) {
      const m = (await Promise.race([qmp.execute('query-migrate'), failed])) as { status?: string; 'error-desc'?: string };
      if (m.status === 'completed') break;
      if (m.status === 'failed' || m.status === 'cancelled') throw new KilnError('snapshot.save_failed', `QEMU could not save the template: ${m['error-desc'] ?? m.status}`, { kind: 'internal' });
      if (Date.now() > deadline) throw new KilnError('snapshot.save_timeout', 'saving the template took over 60s', { kind: 'internal' });
      await new Promise((r) => setTimeout(r, 20));
    }
    await qmp.execute('quit').catch(() => undefined);
    const killer = setTimeout(() => child.kill('SIGKILL'), 2000);
    await exited;
    clearTimeout(killer);
  } finally {
    b.signal?.removeEventListener('abort', abort);
    child.kill('SIGKILL');
    await exited;
    qmp?.close();
    for (const s of sockList) s.destroy();
    for (const s of servers) s.close();
    for (const n of ['q.sock', 'c.sock', 'o.sock', 'e.sock', 'console.log', 'qemu.pid', 'cache-slot.qcow2', 'cache-slot.raw']) rmSync(p(n), { force: true });
  }
}

/**
 * Loads a snapshot into a QEMU started with `-incoming defer` and starts it. Throws (the caller boots cold)
 * if QEMU refuses the state or the VM is not `paused` within `timeoutMs`.
 */
export async function restoreSnapshot(qmp: Qmp, statePath: string, timeoutMs: number): Promise<void> {
  await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'x-ignore-shared', state: true }] });
  await qmp.execute('migrate-incoming', { uri: `exec:cat ${shellQuote(statePath)}` });
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const s = (await qmp.execute('query-status')) as { status?: string };
    if (s.status === 'paused' || s.status === 'postmigrate') break;
    if (s.status !== 'inmigrate' && s.status !== 'prelaunch') throw new KilnError('snapshot.restore_failed', `the restored VM is ${s.status ?? 'in an unknown state'}, not paused`, { kind: 'internal' });
    if (Date.now() > deadline) throw new KilnError('snapshot.restore_timeout', `the VM state did not load within ${Math.round(timeoutMs / 1000)}s`, { kind: 'internal' });
    await new Promise((r) => setTimeout(r, 10));
  }
  await qmp.execute('cont');
}

/** Per-VM settings a cold boot reads from the kernel command line, sent to a restored VM over kiln.ctl instead. */
export interface RestoreSettings {
  /** The registry mirror as the guest reaches it (host:port, checked by prepare). */
  registryMirror?: string;
  /** Mirrors of other registries (kiln.mirror.<registry>=<address> on a cold boot's command line), checked by prepare. */
  registryMirrors?: { registry: string; address: string }[];
  /** The VM has a cache disk behind the snapshot's cache slot: kiln-init mounts it at /cache (CACHE). */
  cache?: boolean;
}

/**
 * What makes a restored VM its own (kiln-init applies it, runs the image's restore hook, then answers STEP
 * identity): fresh entropy and a forced RNG reseed, the host's wall clock, a hostname and a machine-id, then
 * the per-VM settings. Secrets never travel here.
 */
export function identityLines(vmId: string, settings: RestoreSettings = {}, now: () => number = () => performance.timeOrigin + performance.now()): string {
  const b64 = (b: Buffer | string) => Buffer.from(b).toString('base64');
  const host = `kiln-${vmId.toLowerCase().replace(/[^a-z0-9-]/g, '-')}`.slice(0, 63);
  const t = now();
  const clock = Buffer.alloc(16);
  clock.writeBigInt64LE(BigInt(Math.floor(t / 1000)), 0);
  clock.writeBigInt64LE(BigInt(Math.round((t % 1000) * 1e6)), 8);
  const lines = [`SEED ${b64(randomBytes(64))}`, `CLOCK ${b64(clock)}`, `HOST ${b64(host)}`, `MID ${randomBytes(16).toString('hex')}`];
  if (settings.registryMirror) lines.push(`MIRROR ${b64(settings.registryMirror)}`);
  if (settings.registryMirrors?.length) lines.push(`MIRRORS ${b64(settings.registryMirrors.map((m) => `${m.registry}=${m.address}`).join(' '))}`);
  if (settings.cache) lines.push('CACHE');
  lines.push('SYNC');
  return lines.map((l) => `${l}\n`).join('');
}

export function templateArchSupported(arch: Arch): boolean {
  return arch === 'amd64' || arch === 'arm64';
}
