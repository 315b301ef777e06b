/**
 * The QEMU VM driver: one single-use VM per job. Lifecycle of a VM (see docs/ARCHITECTURE.md):
 *   prepare  VM directory, image verified against its digest, copy-on-write scratch disk, cgroup, sockets
 *   boot     QEMU started inside the cgroup with a parent-death signal; kiln-init answers READY on kiln.ctl
 *   run      the job is sent; stdout/stderr stream back on their own ports; kiln-init reports EXIT <code>
 *   teardown QEMU stopped (QMP quit, then SIGKILL), sockets closed, cgroup and VM directory removed
 * Warm starts (opts.snapshots): boot is replaced by a restore of a snapshot (src/vm/snapshot-*.ts), then the
 * per-VM identity, then the job; a restore that fails before the job is sent tears down and boots cold.
 * Whatever happens (timeout, kill, crash, boot failure), `done` settles only after teardown.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createServer, type Server, type Socket } from 'node:net';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { cpus as osCpus, totalmem } from 'node:os';
import { join, resolve } from 'node:path';
import { createHash } from 'node:crypto';
import type { Logger } from 'pino';
import { archFromNode, type Arch } from '../core/arch.ts';
import { KilnError, toKilnError } from '../core/errors.ts';
import { formatSize } from '../core/sizes.ts';
import { chooseAccel, realHostProbe, type AccelChoice } from './accel.ts';
import { cgroupPids, createVmCgroup, detectCgroups, listVmCgroups, removeCgroupDirs, type CgroupLayout, type VmCgroup } from './cgroups.ts';
import { encodeJob, isValidEnvName, makeLineSplitter, parseGuestLine } from './channel.ts';
import { checkDiskSpace, createOverlay, ensureScratchBase, freeBytes } from './disks.ts';
import type { DriverCapabilities, RunningVm, VmDriver, VmInfo, VmOutput, VmPhase, VmResult, VmSpec, VmTimings } from './driver.ts';
import { which } from './files.ts';
import { currentOwner, isAlive, ownerAlive, processCmdline, type Owner } from './process.ts';
import { buildQemuArgs, hostTscKhz, qemuBinary, qemuPackage } from './qemu-args.ts';
import { makeQmp, type Qmp } from './qmp.ts';
import { checkSealed } from './seal.ts';
import { makeSnapshotStore } from './snapshot-store.ts';
import { identityLines, restoreSnapshot } from './snapshot-template.ts';
import { makeWarmStarts, type TemplateLaunch, type WarmChoice, type WarmStarts } from './snapshot-warm.ts';

export interface QemuDriverOptions {
  dataDir: string;
  accel?: 'auto' | 'kvm' | 'tcg';
  /** Boot (QEMU start to kiln-init READY) limit; default depends on the accelerator. */
  bootTimeoutMs?: number;
  logger?: Logger;
  /** Extra memory the QEMU process may use beyond guest RAM before its cgroup limit. */
  memoryOverheadBytes?: number;
  /** Warm starts from memory snapshots (src/vm/snapshot-*.ts); off unless set. */
  snapshots?: { budgetBytes?: number };
}

export interface QemuDriver extends VmDriver {
  accelFor(arch: Arch): AccelChoice;
  /** Warm-start snapshots of this driver's data directory, when enabled. */
  readonly warm: WarmStarts | undefined;
}

const MiB = 1024 * 1024;
const CONSOLE_TAIL_LINES = 15;

/** Shell run between Node and QEMU: join the cgroups, make the VM the OOM killer's first choice, die with kiln. */
const LAUNCH_WRAPPER =
  'for f in $KILN_CGROUP_PROCS; do echo $$ > "$f" || exit 97; done; ' +
  'echo 500 > /proc/self/oom_score_adj 2>/dev/null; ' +
  'exec setpriv --pdeathsig KILL -- "$@"';

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
  const cgroupName = (id: string) => `${id}.${dataTag}`;

  const accelFor = (arch: Arch) => chooseAccel(arch, hostArch, realHostProbe, opts.accel ?? 'auto');

  const validate = (spec: VmSpec) => {
    if (!/^[A-Za-z0-9_-]{1,40}$/.test(spec.id)) {
      throw new KilnError('vm.bad_id', `VM id "${spec.id}" must be 1-40 letters, digits, '-' or '_'`, { kind: 'internal' });
    }
    if (running.has(spec.id) || existsSync(join(vmsDir, spec.id))) throw new KilnError('vm.exists', `a VM with id ${spec.id} already exists`, { kind: 'internal' });
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
      throw new KilnError('input.bad_registry_mirror', `registry mirror "${spec.registryMirror}" is not host:port`, { hint: 'e.g. 10.0.2.2:5000 (the address as the guest reaches it)' });
    }
    if (spec.job.command.length === 0 || spec.job.command[0] === '') {
      throw new KilnError('input.no_command', 'no command to run', { hint: 'put the command after --, e.g. `kiln run -- uname -a`' });
    }
    if (spec.job.command[0]!.includes('=')) {
      throw new KilnError('input.bad_command', `the command name "${spec.job.command[0]}" contains '='`, { hint: 'run it through a shell: -- sh -c "…"' });
    }
  };

  const defaultBootTimeoutMs = (spec: VmSpec, accel: 'kvm' | 'tcg') =>
    opts.bootTimeoutMs ?? (accel === 'kvm' ? 30_000 : spec.arch === 'amd64' ? 90_000 : 240_000) * (spec.image.rootDiskPath ? 2 : 1);
  const warm = opts.snapshots
    ? makeWarmStarts({ store: makeSnapshotStore(opts.dataDir, opts.snapshots), disksDir, bootTimeoutMs: defaultBootTimeoutMs, ...(opts.logger ? { logger: opts.logger } : {}) })
    : undefined;

  /** kiln's launch of this spec without per-VM files: what a template and a restore must share. */
  const launchBase = (spec: VmSpec, accel: 'kvm' | 'tcg'): TemplateLaunch => ({
    id: spec.id,
    arch: spec.arch,
    accel,
    cpus: spec.cpus,
    memoryMiB: Math.ceil(spec.memoryBytes / MiB),
    kernel: spec.image.kernelPath,
    initrd: spec.image.initrdPath,
    // A snapshot's kernel command line is the template's (never read again): a VM with a registry mirror boots cold.
    ...(spec.image.cmdline || (spec.registryMirror && spec.warm === false) ? { cmdline: [...(spec.image.cmdline ?? []), ...(spec.registryMirror && spec.warm === false ? [`kiln.registry_mirror=${spec.registryMirror}`] : [])] } : {}),
    ...(spec.arch === 'amd64' && hostArch === 'amd64' && accel === 'tcg' ? { tscKhz: (tscKhz ??= hostTscKhz(readText('/proc/cpuinfo'))) } : {}),
  });

  async function start(spec: VmSpec, out: VmOutput): Promise<RunningVm> {
    validate(spec);
    const t0 = performance.now();
    const accel = accelFor(spec.arch);
    let choice: WarmChoice | undefined;
    // Images with a root disk (ci, runner) boot cold for now: their Docker engine id and registry mirror are
    // not yet renewed after a restore (docs/ARCHITECTURE.md, "Warm starts").
    if (warm && spec.warm !== false && !spec.registryMirror && !spec.image.rootDiskPath) {
      await verifyImage(spec);
      choice = await warm.choose(spec, accel.accel, launchBase(spec, accel.accel), out);
    }
    if (choice) {
      try {
        return await attempt(spec, out, performance.now() - t0 - (choice.buildMs ?? 0), choice);
      } catch (e) {
        const why = toKilnError(e).message;
        warm!.drop(choice, why);
        warm!.counters.fallbacks++;
        out.note?.(`warm start failed (${why}): booting cold; the snapshot was dropped and the next run rebuilds it`);
      }
    }
    if (warm) warm.counters.cold++;
    return attempt(spec, out, choice ? 0 : performance.now() - t0, undefined);
  }

  const verifyImage = async (spec: VmSpec) => {
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
  };

  /** One launch of a VM: cold (boot) or warm (restore `snap`). A warm attempt that fails before the job is sent throws, after its teardown. */
  async function attempt(spec: VmSpec, out: VmOutput, earlierPrepareMs: number, snap: WarmChoice | undefined): Promise<RunningVm> {
    const tAttempt = performance.now();
    const log = opts.logger?.child({ vmId: spec.id });
    const accel = accelFor(spec.arch);
    const vmDir = join(vmsDir, spec.id);
    mkdirSync(vmsDir, { recursive: true });
    mkdirSync(vmDir);
    writeFileSync(join(vmDir, 'owner.json'), JSON.stringify(currentOwner()));
    if (!loweredOwnOom && process.getuid?.() === 0) {
      loweredOwnOom = true;
      try {
        writeFileSync('/proc/self/oom_score_adj', '-500');
      } catch {
        /* best effort: an unprivileged kiln cannot lower its own score */
      }
    }

    const sock = (n: string) => join(vmDir, n);
    const paths = { qmp: sock('qmp.sock'), ctl: sock('ctl.sock'), stdout: sock('out.sock'), stderr: sock('err.sock') };
    if (paths.stdout.length > 100) {
      rmSync(vmDir, { recursive: true, force: true });
      throw new KilnError('vm.path_too_long', `the data directory path is too long for unix sockets (${vmDir})`, { hint: 'use a shorter --data-dir / KILN_DATA_DIR' });
    }

    const servers: Server[] = [];
    let cgroup: VmCgroup | undefined;
    let child: ChildProcess | undefined;
    let phase: VmPhase = 'preparing';
    running.set(spec.id, { arch: spec.arch, phase: () => phase });

    const cleanupHost = async () => {
      for (const s of servers) s.close();
      if (cgroup) {
        let left = removeCgroupDirs(cgroup.dirs);
        for (let i = 0; left.length > 0 && i < 50; i++) {
          await delay(10);
          left = removeCgroupDirs(left);
        }
        if (left.length > 0) log?.warn({ left }, 'cgroups could not be removed; the next sweep will retry');
      }
      rmSync(vmDir, { recursive: true, force: true });
      running.delete(spec.id);
    };

    // ---- prepare
    const accepted: Record<keyof typeof paths, Promise<Socket>> = {} as never;
    try {
      for (const [name, p] of Object.entries(paths) as [keyof typeof paths, string][]) {
        const server = createServer();
        servers.push(server);
        accepted[name] = new Promise((resolve) => server.once('connection', resolve));
        await new Promise<void>((resolve, reject) => {
          server.once('error', reject);
          server.listen(p, resolve);
        });
      }
      layout ??= detectCgroups();
      if (layout.problems.length > 0) log?.warn({ problems: layout.problems }, 'VM resource limits are partly unavailable');
      checkDiskSpace(opts.dataDir, spec.diskBytes);
      const disk = join(vmDir, 'scratch.qcow2');
      const rootOverlay = join(vmDir, 'root.qcow2');
      await Promise.all([
        // A warm VM's disks are new copy-on-write overlays on the snapshot's saved (read-only) overlays.
        snap
          ? createOverlay(disk, join(snap.dir, 'scratch.qcow2'), 'qcow2')
          : verifyImage(spec).then(() => ensureScratchBase(disksDir, spec.diskBytes)).then((base) => createOverlay(disk, base, 'raw', spec.diskBytes)),
        spec.image.rootDiskPath ? createOverlay(rootOverlay, snap ? join(snap.dir, 'root.qcow2') : spec.image.rootDiskPath, 'qcow2') : undefined,
      ]);
      const overhead = opts.memoryOverheadBytes ?? 256 * MiB;
      cgroup = createVmCgroup(layout, cgroupName(spec.id), { cpus: spec.cpus, memoryBytes: spec.memoryBytes + overhead, pids: 128 + 2 * spec.cpus });
      // A snapshot always has a NIC (the device set must match); it stays closed unless the job asks.
      const network =
        snap || spec.network === 'user' || (spec.forwards?.length ?? 0) > 0 ? { restrict: spec.network !== 'user', forwards: spec.forwards ?? [] } : undefined;
      const args = buildQemuArgs({
        ...launchBase(snap ? spec : { ...spec, warm: false }, accel.accel === 'kvm' ? 'kvm' : 'tcg'),
        ...(snap ? { ramFile: { path: join(snap.dir, 'ram'), shared: false }, incomingDefer: true } : {}),
        sockets: paths,
        consoleLog: join(vmDir, 'console.log'),
        pidFile: join(vmDir, 'qemu.pid'),
        scratchDisk: disk,
        ...(spec.image.rootDiskPath ? { rootDisk: rootOverlay } : {}),
        ...(network ? { network } : {}),
      });
      log?.debug({ args }, 'starting QEMU');
      child = spawn('/bin/sh', ['-c', LAUNCH_WRAPPER, 'kiln-launch', qemuBinary(spec.arch), ...args], {
        stdio: ['ignore', 'ignore', 'pipe'],
        env: { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin', KILN_CGROUP_PROCS: cgroup.procsFiles.join(' ') },
      });
    } catch (e) {
      await cleanupHost();
      throw toKilnError(e);
    }

    // ---- boot, run, teardown
    const proc = child;
    const timings: VmTimings = {
      prepareMs: earlierPrepareMs + performance.now() - tAttempt,
      launchedAtMs: performance.now(),
      bootMs: 0,
      runMs: 0,
      teardownMs: 0,
      start: snap ? 'warm' : 'cold',
      ...(snap?.buildMs !== undefined ? { snapshotBuildMs: snap.buildMs } : {}),
    };
    const tSpawn = performance.now();
    let tReady = 0;
    let tExit = 0;
    let tStop = 0;
    phase = 'booting';
    let qemuStderr = '';
    proc.stderr?.setEncoding('utf8').on('data', (d: string) => {
      if (qemuStderr.length < 8192) qemuStderr += d;
    });
    const procExited = new Promise<number | null>((resolve) => proc.on('exit', (code) => resolve(code)));
    let exitCode: number | undefined;
    let stopReason: { kind: 'killed'; reason: string } | { kind: 'timed_out' } | { kind: 'boot_timeout' } | undefined;
    let qmp: Qmp | undefined;
    let lastStep = '';

    const stop = (why: typeof stopReason) => {
      if (phase === 'stopping' || phase === 'stopped') return;
      stopReason ??= why;
      phase = 'stopping';
      tStop = performance.now();
      // A graceful quit through the monitor, and SIGKILL shortly after if QEMU has not gone.
      const kill = setTimeout(() => proc.kill('SIGKILL'), qmp ? 300 : 0);
      void procExited.then(() => clearTimeout(kill));
      qmp?.execute('quit').catch(() => proc.kill('SIGKILL'));
    };

    const streamEnded = (s: Socket) => new Promise<void>((resolve) => (s.destroyed ? resolve() : s.once('close', () => resolve())));
    const outputs: Promise<void>[] = [];
    void accepted.stdout.then((s) => {
      s.on('data', (d: Buffer) => out.stdout(d));
      outputs.push(streamEnded(s));
    });
    void accepted.stderr.then((s) => {
      s.on('data', (d: Buffer) => out.stderr(d));
      outputs.push(streamEnded(s));
    });
    let qmpConnected: (q: Qmp) => void = () => undefined;
    const qmpReady = new Promise<Qmp>((resolve) => (qmpConnected = resolve));
    let identityAck: ((failed: string | undefined) => void) | undefined;
    const guestUp = (s: Socket) => {
      tReady = performance.now();
      phase = 'running';
      clearTimeout(bootTimer);
      log?.debug({ bootMs: tReady - tSpawn, start: timings.start }, 'guest ready');
      s.write(encodeJob(spec.job, spec.network === 'user'));
      out.running?.();
    };
    void accepted.qmp.then(async (s) => {
      try {
        qmp = await makeQmp(s);
        qmpConnected(qmp);
        if (phase === 'stopping') void qmp.execute('quit').catch(() => proc.kill('SIGKILL'));
      } catch {
        /* QEMU went away during negotiation; procExited handles it */
      }
    });
    void accepted.ctl.then((s) => {
      s.on(
        'data',
        makeLineSplitter((line) => {
          const msg = parseGuestLine(line);
          if (msg.type === 'ready' && phase === 'booting' && !snap) {
            if (Number.isFinite(msg.uptimeMs)) timings.guestUptimeAtInitMs = msg.uptimeMs;
            guestUp(s);
          } else if (msg.type === 'step') {
            lastStep = msg.name;
            if (msg.name === 'identity') identityAck?.(undefined);
            else if (msg.name.startsWith('identity-failed')) identityAck?.(msg.name.slice('identity-failed:'.length) || 'unknown');
          } else if (msg.type === 'exit' && phase === 'running') {
            exitCode = msg.code;
            tExit = performance.now();
            stop(undefined);
          }
        }),
      );
      s.on('error', () => undefined);
    });
    for (const p of Object.values(accepted)) void p.then((s) => s.on('error', () => undefined));

    const accelLabel = accel.accel === 'kvm' ? 'kvm' : 'tcg';
    // Images with a root disk (the ci profile) start Docker before READY: give them twice as long.
    const bootTimeoutMs = defaultBootTimeoutMs(spec, accelLabel);
    const bootTimer = setTimeout(() => stop({ kind: 'boot_timeout' }), Math.min(bootTimeoutMs, spec.timeoutMs));
    const jobTimer = setTimeout(() => stop({ kind: 'timed_out' }), spec.timeoutMs);

    const done: Promise<VmResult> = (async () => {
      const code = await procExited;
      clearTimeout(bootTimer);
      clearTimeout(jobTimer);
      const tGone = performance.now();
      // Everything QEMU wrote before it exited is still readable from our side of the sockets.
      await Promise.race([Promise.all(outputs), delay(5000, true)]);
      for (const p of Object.values(accepted)) void p.then((s) => s.destroy());
      const consoleTail = readTail(join(vmDir, 'console.log'), CONSOLE_TAIL_LINES);
      const wasPhase = phase as VmPhase;
      phase = 'stopped';
      await cleanupHost();
      const end = performance.now();
      timings.bootMs = (tReady || tGone) - tSpawn;
      timings.runMs = tReady ? (tExit || tStop || tGone) - tReady : 0;
      timings.teardownMs = end - (tExit || tStop || tGone);
      log?.debug({ timings, code }, 'VM gone');
      if (exitCode !== undefined) return { outcome: 'exited', exitCode, timings };
      if (stopReason?.kind === 'timed_out') return { outcome: 'timed_out', timings };
      if (stopReason?.kind === 'killed') return { outcome: 'killed', reason: stopReason.reason, timings };
      if (!tReady) {
        const step = bootStep(consoleTail, stopReason?.kind === 'boot_timeout');
        const why =
          code === 97
            ? 'QEMU could not join its cgroup'
            : stopReason?.kind === 'boot_timeout'
              ? `the guest did not reach kiln-init's channel within ${Math.round(bootTimeoutMs / 1000)}s`
              : `QEMU exited with code ${code ?? 'signal'}${qemuStderr ? `: ${qemuStderr.trim().split('\n').slice(-2).join(' ')}` : ''}`;
        return {
          outcome: 'boot_failed',
          code: stopReason?.kind === 'boot_timeout' ? 'vm.boot_timeout' : 'vm.boot_failed',
          message: `VM failed to boot (${accelLabel}, step: ${step}): ${why}`,
          consoleTail,
          timings,
        };
      }
      return {
        outcome: 'crashed',
        code: 'vm.crashed',
        message: `the VM stopped while the job was ${wasPhase === 'running' ? 'running' : wasPhase}${lastStep ? ` (last step: ${lastStep})` : ''} without reporting an exit status`,
        consoleTail,
        timings,
      };
    })();

    // A warm VM: load the snapshot, start it, give it its own identity; only then the job (and its secrets).
    if (snap) {
      const restore = (async () => {
        const q = await qmpReady;
        await restoreSnapshot(q, join(snap.dir, 'state'), accelLabel === 'kvm' ? 5_000 : 20_000);
        const ctl = await accepted.ctl;
        const ack = new Promise<void>((resolve, reject) => {
          identityAck = (failed) =>
            failed === undefined ? resolve() : reject(new KilnError('snapshot.identity_failed', `the restored guest could not take its own identity (${failed})`, { kind: 'internal' }));
          const t = setTimeout(() => reject(new KilnError('snapshot.identity_timeout', 'the restored guest did not answer on kiln.ctl within 20s', { kind: 'internal' })), 20_000);
          t.unref();
        });
        ctl.write(identityLines(spec.id));
        await ack;
        guestUp(ctl);
      })();
      const gone = procExited.then((code) => {
        throw new KilnError('snapshot.restore_failed', `QEMU exited (code ${code ?? 'signal'}) during the restore${qemuStderr ? `: ${qemuStderr.trim().split('\n').slice(-1)[0]}` : ''}`, { kind: 'internal' });
      });
      try {
        await Promise.race([restore, gone]);
        warm!.counters.warm++;
        warm!.counters.restoreMsTotal += tReady - tSpawn;
      } catch (e) {
        void restore.catch(() => undefined);
        void gone.catch(() => undefined);
        // The job's own time ran out during the restore: that is its result, not a fault of the snapshot.
        if (stopReason?.kind !== 'timed_out') {
          stop({ kind: 'killed', reason: 'warm start failed' });
          await done;
          throw e;
        }
      }
    }

    return {
      id: spec.id,
      done,
      phase: () => phase,
      async kill(reason) {
        stop({ kind: 'killed', reason });
        await done;
      },
    };
  }

  async function sweep(): Promise<{ removed: string[] }> {
    const removed: string[] = [];
    warm?.store.sweep();
    layout ??= detectCgroups();
    // Cgroups are host-wide; ours carry this data directory's tag. Others may belong to another kiln.
    const cgroups = new Map<string, string[]>();
    for (const [name, dirs] of listVmCgroups(layout)) {
      if (name.endsWith(`.${dataTag}`)) cgroups.set(name.slice(0, -dataTag.length - 1), dirs);
      else {
        // Not ours: never touch its processes; remove it only if empty and not freshly made (a launch in progress).
        removeCgroupDirs(dirs.filter((d) => cgroupPids(d).length === 0 && Date.now() - statSync(d).mtimeMs > 60_000));
      }
    }
    const ids = new Set<string>([...(existsSync(vmsDir) ? readdirSync(vmsDir) : []), ...cgroups.keys()]);
    for (const id of ids) {
      if (running.has(id)) continue;
      const dir = join(vmsDir, id);
      const owner = readJson<Owner>(join(dir, 'owner.json'));
      if (owner && ownerAlive(owner)) continue; // a live kiln (maybe another driver in this process) owns it
      if (!owner && existsSync(dir) && Date.now() - statSync(dir).mtimeMs < 60_000) continue; // being created right now
      const pids = new Set<number>((cgroups.get(id) ?? []).flatMap(cgroupPids));
      const pidFile = Number(readText(join(dir, 'qemu.pid')).trim());
      if (pidFile > 0) pids.add(pidFile);
      for (const pid of pids) {
        if (isAlive(pid) && processCmdline(pid).includes(`kiln-vm-${id}`)) {
          try {
            process.kill(pid, 'SIGKILL');
          } catch {
            /* already gone */
          }
          for (let i = 0; i < 200 && isAlive(pid); i++) await delay(10);
        }
      }
      let left = removeCgroupDirs(cgroups.get(id) ?? []);
      for (let i = 0; left.length > 0 && i < 50; i++) {
        await delay(10);
        left = removeCgroupDirs(left);
      }
      rmSync(dir, { recursive: true, force: true });
      removed.push(id);
      opts.logger?.info({ vmId: id }, 'removed what an earlier kiln left behind');
    }
    return { removed };
  }

  return {
    name: 'qemu',
    accelFor,
    warm,
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
    sweep,
  };
}

function delay(ms: number, unref = false): Promise<void> {
  return new Promise((r) => {
    const t = setTimeout(r, ms);
    if (unref) t.unref();
  });
}

function readText(p: string): string {
  try {
    return readFileSync(p, 'utf8');
  } catch {
    return '';
  }
}

function readJson<T>(p: string): T | undefined {
  try {
    return JSON.parse(readFileSync(p, 'utf8')) as T;
  } catch {
    return undefined;
  }
}

function readTail(p: string, n: number): string[] {
  return readText(p)
    .split('\n')
    .map((l) => l.replace(/\r$/, ''))
    .filter((l) => l.trim() !== '')
    .slice(-n);
}

/** Names the furthest boot step the console shows. */
function bootStep(console: string[], timedOut: boolean): string {
  const init = [...console].reverse().find((l) => l.includes('kiln-init: '));
  if (init) return `kiln-init ${init.slice(init.indexOf('kiln-init: ') + 11)}`;
  if (console.length > 0) return 'kernel boot (kiln-init never started)';
  return timedOut ? 'kernel boot (no console output)' : 'starting QEMU';
}
