/**
 * An in-memory VmDriver for scheduler tests and benchmarks. Nothing boots: the "guest" interprets a tiny
 * shell-like command language, so a job can print, sleep, fail, time out and be killed exactly as the
 * port promises (and as test/support/vm-conformance.ts checks for every driver).
 *
 * The job's command is either `sh -c SCRIPT` or an argv run as one statement. A script is statements
 * separated by `;` or new lines, each words with '…' or "…" quoting:
 *   echo [-n] WORDS… [>&2]   print (to stderr with a trailing >&2)
 *   sleep SECONDS|infinity   wait (fractions allowed)
 *   exit N                   stop with status N
 *   true | false             status 0 | 1
 *   uname -m                 the guest's machine name (x86_64 or aarch64)
 *   pwd | env                working directory | environment, one KEY=VALUE a line
 *   printenv NAME…           each named variable's value, one a line
 *   printargs                the arguments after `sh -c SCRIPT NAME`, one a line
 *   spew BYTES [stderr]      that many bytes of output, in 64 KiB chunks
 *   append FILE WORDS…       appends a line to FILE inside the `appendDir` the test gave the driver (tests
 *                            use it to count real executions); without `appendDir` (every driver the CLI
 *                            makes) it refuses: a job on the memory driver touches nothing on the host
 *   cache-fill MIB           writes MIB MiB of patterned data into the job's cache disk (qemu-io on its overlay,
 *                            from 5/8 of the disk, in the file system's free space), when the test gave the driver
 *                            `cacheWrites` (transfer tests need a cache with content); refused otherwise
 *   NAME ARGS…               a program the test registered in `programs` (e.g. a stand-in Actions runner)
 * Anything else prints `sh: NAME: not found` on stderr and stops with status 127, as a shell would.
 * A warm cache disk (VmSpec.cacheDisk) is attached to nothing and written only by `cache-fill`: an exit reports
 * it clean (`cacheClean`), so the caller's commit path runs on the overlay.
 */
import { execFile } from 'node:child_process';
import { appendFileSync, createReadStream, existsSync } from 'node:fs';
import { qcow2VirtualSize } from './qcow2.ts';
import { resolve, sep } from 'node:path';
import { createHash } from 'node:crypto';
import { unameMachine, type Arch } from '../core/arch.ts';
import { KilnError } from '../core/errors.ts';
import type { DriverCapabilities, RunningVm, SnapshotPort, VmDriver, VmInfo, VmOutput, VmPhase, VmResult, VmSpec, VmTimings } from './driver.ts';

export interface MemoryDriverOptions {
  name?: string;
  arches?: Arch[];
  cpus?: number;
  memoryBytes?: number;
  diskFreeBytes?: number;
  /** Simulated boot time (VMM start to guest init). Default 0. */
  bootMs?: number;
  /**
   * The one host directory `append` may write in (a test's own temp dir). Unset: `append` fails, so jobs
   * on this driver never touch the host's files (docs/security.md).
   */
  appendDir?: string;
  /** Extra guest programs, by name: tests stand in for software a real image would carry. */
  programs?: Record<string, GuestProgram>;
  /**
   * Simulated warm-start snapshots (the driver's `snapshots` port, as the QEMU driver has): the agent's planner
   * builds one per image and shape ahead of need, and a VM whose image and shape has one starts warm (`bootMs`
   * of `warmBootMs`, default 0). Unset: no snapshots, every VM cold.
   */
  snapshots?: { budgetBytes?: number; bytesEach?: number; buildMs?: number; warmBootMs?: number };
  /** Lets `cache-fill` write into a job's cache disk overlay (tests of cache commits and transfers). */
  cacheWrites?: boolean;
}

/** A simulated guest program: resolves to its exit status; `signal` aborts when the VM is stopped. */
export type GuestProgram = (p: { args: string[]; env: Record<string, string>; stdout(s: string): void; stderr(s: string): void; signal: AbortSignal }) => Promise<number>;

const ID_RE = /^[A-Za-z0-9_-]{1,64}$/;

export function makeMemoryDriver(opts: MemoryDriverOptions = {}): VmDriver {
  const arches = opts.arches ?? ['amd64', 'arm64'];
  const caps: DriverCapabilities = {
    arches: arches.map((arch) => ({ arch, accel: 'tcg' as const, note: 'simulated in memory' })),
    cpus: opts.cpus ?? 8,
    memoryBytes: opts.memoryBytes ?? 32 * 1024 ** 3,
    diskFreeBytes: opts.diskFreeBytes ?? 500 * 1024 ** 3,
  };
  const vms = new Map<string, { arch: Arch; phase: () => VmPhase }>();
  const snaps = opts.snapshots ? memorySnapshots(opts.snapshots) : undefined;

  return {
    name: opts.name ?? 'memory',
    ...(snaps ? { snapshots: snaps } : {}),
    async capabilities() {
      return structuredClone(caps);
    },
    list(): VmInfo[] {
      return [...vms.entries()].map(([id, v]) => ({ id, arch: v.arch, phase: v.phase() }));
    },
    async sweep() {
      return { removed: [] };
    },
    async start(spec: VmSpec, out: VmOutput): Promise<RunningVm> {
      if (!ID_RE.test(spec.id)) throw new KilnError('vm.bad_id', `VM id "${spec.id}" may use only letters, digits, - and _`);
      if (vms.has(spec.id)) throw new KilnError('vm.exists', `a VM with id ${spec.id} already exists`, { kind: 'internal' });
      if (!arches.includes(spec.arch)) {
        throw new KilnError('vm.unsupported_arch', `this host cannot run ${spec.arch} guests`, { hint: `use one of: ${arches.join(', ')}` });
      }
      if (spec.cpus < 1 || spec.cpus > caps.cpus || spec.memoryBytes > caps.memoryBytes || spec.diskBytes > caps.diskFreeBytes) {
        throw new KilnError('vm.too_large', `the VM (${spec.cpus} CPUs, ${spec.memoryBytes} bytes of memory) does not fit this host`, {
          hint: `ask for at most ${caps.cpus} CPUs and ${caps.memoryBytes} bytes`,
        });
      }
      if (spec.image.arch !== spec.arch) throw new KilnError('image.wrong_arch', `image ${spec.image.digest} is for ${spec.image.arch}, not ${spec.arch}`);
      const t0 = performance.now();
      await verifyImage(spec);
      // A VM with a cache disk restores from a snapshot with a cache slot of its size, as with QEMU.
      const warm = snaps !== undefined && snaps.find(spec) !== undefined;
      const bootMs = warm ? (opts.snapshots?.warmBootMs ?? 0) : (opts.bootMs ?? 0);
      const vm = runGuest(spec, out, bootMs, warm ? 'warm' : 'cold', t0, () => vms.delete(spec.id), opts.programs ?? {}, opts.appendDir === undefined ? undefined : resolve(opts.appendDir), opts.cacheWrites === true);
      vms.set(spec.id, { arch: spec.arch, phase: vm.phase });
      return vm;
    },
  };
}

/** Image files named by a real path are checked against their digests, as a real driver does. */
async function verifyImage(spec: VmSpec): Promise<void> {
  const files = [
    [spec.image.kernelPath, spec.image.kernelSha256],
    [spec.image.initrdPath, spec.image.initrdSha256],
  ] as const;
  for (const [path, sum] of files) {
    if (!path || path.startsWith('memory:')) continue;
    if (!existsSync(path)) throw new KilnError('image.missing', `image file ${path} does not exist`, { hint: 'rebuild the image' });
    const h = createHash('sha256');
    for await (const chunk of createReadStream(path)) h.update(chunk as Buffer);
    if (h.digest('hex') !== sum) {
      throw new KilnError('image.corrupt', `image file ${path} does not match its digest`, { hint: 'remove the image and build it again' });
    }
  }
}

/** The simulated snapshot store: one per image digest, arch and shape, under a byte budget. */
function memorySnapshots(o: NonNullable<MemoryDriverOptions['snapshots']>): SnapshotPort {
  const built = new Map<string, number>();
  const keyOf = (spec: VmSpec) => [spec.image.digest, spec.arch, spec.cpus, spec.memoryBytes, spec.diskBytes, ...(spec.cacheBytes !== undefined ? [`cache=${spec.cacheBytes}`] : [])].join('|');
  const bytesEach = o.bytesEach ?? 64 * 1024 ** 2;
  return {
    budgetBytes: o.budgetBytes ?? 8 * 1024 ** 3,
    usedBytes: () => [...built.values()].reduce((a, b) => a + b, 0),
    find(spec) {
      const b = built.get(keyOf(spec));
      return b === undefined ? undefined : { bytes: b };
    },
    async build(spec, signal) {
      await new Promise((r) => setTimeout(r, o.buildMs ?? 0));
      if (signal?.aborted) throw new KilnError('vm.killed', 'the snapshot build was stopped');
      built.set(keyOf(spec), bytesEach);
      return { bytes: bytesEach };
    },
    onDrop() {
      /* simulated snapshots are never dropped */
    },
  };
}

function runGuest(spec: VmSpec, out: VmOutput, bootMs: number, start: 'warm' | 'cold', t0: number, gone: () => void, programs: Record<string, GuestProgram>, appendDir: string | undefined, cacheWrites = false): RunningVm {
  const abort = new AbortController();
  let phase: VmPhase = 'booting';
  let settle!: (r: VmResult) => void;
  const done = new Promise<VmResult>((r) => (settle = r));
  const timers = new Set<NodeJS.Timeout>();
  const wakers = new Set<() => void>();
  let stopped: { outcome: 'timed_out' } | { outcome: 'killed'; reason: string } | undefined;
  const tPrepared = performance.now();
  let tBooted = tPrepared;
  let tExit = tPrepared;

  const wait = (ms: number) =>
    new Promise<void>((resolve) => {
      if (stopped) return resolve();
      const wake = () => {
        clearTimeout(t);
        timers.delete(t);
        wakers.delete(wake);
        resolve();
      };
      const t = setTimeout(wake, Math.max(0, ms));
      timers.add(t);
      wakers.add(wake);
    });
  const stop = (why: NonNullable<typeof stopped>) => {
    if (stopped || phase === 'stopped') return;
    stopped = why;
    phase = 'stopping';
    abort.abort();
    for (const w of [...wakers]) w();
  };
  const deadline = setTimeout(() => stop({ outcome: 'timed_out' }), spec.timeoutMs);

  const timings = (): VmTimings => ({
    prepareMs: tPrepared - t0,
    bootMs: tBooted - tPrepared,
    guestUptimeAtInitMs: bootMs,
    runMs: tExit - tBooted,
    teardownMs: Math.max(0, performance.now() - tExit),
    start,
  });

  void (async () => {
    await wait(bootMs);
    if (!stopped && out.mayStart) {
      await out.mayStart({ start, bootMs: Math.round(performance.now() - tPrepared) }).catch((e: unknown) => stop({ outcome: 'killed', reason: e instanceof Error ? e.message : String(e) }));
    }
    tBooted = performance.now();
    let status = 0;
    if (!stopped) {
      phase = 'running';
      out.running?.();
      status = await interpret(spec, out, wait, () => stopped !== undefined, programs, abort.signal, appendDir, cacheWrites);
    }
    tExit = performance.now();
    phase = 'stopping';
    clearTimeout(deadline);
    for (const t of timers) clearTimeout(t);
    await new Promise((r) => setImmediate(r));
    phase = 'stopped';
    gone();
    if (stopped?.outcome === 'timed_out') settle({ outcome: 'timed_out', timings: timings() });
    else if (stopped?.outcome === 'killed') settle({ outcome: 'killed', reason: stopped.reason, timings: timings() });
    // The simulated guest never writes the cache disk (VmSpec.cacheDisk), so it is always left clean: a
    // job's cache may then be committed unchanged, which lets the write-back rule be tested without QEMU.
    else settle({ outcome: 'exited', exitCode: status, timings: timings(), ...(spec.cacheDisk ? { cacheClean: true } : {}) });
  })();

  return {
    id: spec.id,
    done,
    phase: () => phase,
    async kill(reason) {
      stop({ outcome: 'killed', reason });
      await done;
    },
  };
}

export function splitWords(statement: string): string[] {
  const words: string[] = [];
  const re = /'([^']*)'|"((?:[^"\\]|\\.)*)"|(\S+)/g;
  for (let m = re.exec(statement); m; m = re.exec(statement)) {
    words.push(m[1] ?? (m[2] !== undefined ? m[2].replace(/\\(.)/g, '$1') : (m[3] ?? '')));
  }
  return words;
}

async function interpret(
  spec: VmSpec,
  out: VmOutput,
  wait: (ms: number) => Promise<void>,
  stopped: () => boolean,
  programs: Record<string, GuestProgram> = {},
  signal: AbortSignal = new AbortController().signal,
  appendDir?: string,
  cacheWrites = false,
): Promise<number> {
  const argv = spec.job.command;
  const statements = argv[0] === 'sh' && argv[1] === '-c' ? (argv[2] ?? '').split(/[;\n]/).map(splitWords) : [argv];
  let status = 0;
  const emit = (stream: 'stdout' | 'stderr', text: string | Buffer) => {
    const b = typeof text === 'string' ? Buffer.from(text) : text;
    if (b.length > 0) out[stream](b);
  };
  for (const words of statements) {
    if (stopped()) return status;
    const [cmd, ...args] = words;
    if (cmd === undefined) continue;
    switch (cmd) {
      case 'true':
        status = 0;
        break;
      case 'false':
        status = 1;
        break;
      case 'echo': {
        let a = args;
        let stream: 'stdout' | 'stderr' = 'stdout';
        if (a[a.length - 1] === '>&2') {
          stream = 'stderr';
          a = a.slice(0, -1);
        }
        const noNewline = a[0] === '-n';
        emit(stream, `${(noNewline ? a.slice(1) : a).join(' ')}${noNewline ? '' : '\n'}`);
        status = 0;
        break;
      }
      case 'sleep': {
        const s = args[0] === 'infinity' ? Infinity : Number(args[0]);
        if (!Number.isFinite(s) && s !== Infinity) {
          emit('stderr', `sleep: invalid time interval '${args[0] ?? ''}'\n`);
          status = 1;
          break;
        }
        await wait(s === Infinity ? 2 ** 31 - 1 : s * 1000);
        status = 0;
        break;
      }
      case 'exit':
        return Number(args[0] ?? status) & 255;
      case 'uname':
        emit('stdout', args[0] === '-m' ? `${unameMachine(spec.arch)}\n` : `Linux kiln-memory 0.0.0 ${unameMachine(spec.arch)}\n`);
        status = 0;
        break;
      case 'pwd':
        emit('stdout', `${spec.job.cwd ?? '/work'}\n`);
        status = 0;
        break;
      case 'printenv':
        emit('stdout', args.map((n) => `${spec.job.env[n] ?? ''}\n`).join(''));
        status = 0;
        break;
      case 'printargs':
        emit('stdout', (argv[0] === 'sh' && argv[1] === '-c' ? argv.slice(4) : []).map((a) => `${a}\n`).join(''));
        status = 0;
        break;
      case 'env':
        emit('stdout', Object.entries(spec.job.env).map(([k, v]) => `${k}=${v}\n`).join(''));
        status = 0;
        break;
      case 'spew': {
        let left = Math.max(0, Number(args[0] ?? 0));
        const stream = args[1] === 'stderr' ? 'stderr' : 'stdout';
        const block = Buffer.alloc(64 * 1024, 'y');
        while (left > 0 && !stopped()) {
          const n = Math.min(left, block.length);
          emit(stream, block.subarray(0, n));
          left -= n;
          await new Promise((r) => setImmediate(r));
        }
        status = 0;
        break;
      }
      case 'append': {
        const [file, ...rest] = args;
        const target = file && appendDir ? resolve(appendDir, file) : undefined;
        if (!target || !target.startsWith(`${appendDir}${sep}`)) {
          emit('stderr', appendDir ? `append: ${file ?? '(none)'} is outside the driver's append directory\n` : 'append: disabled (the memory driver writes no host files)\n');
          status = 2;
          break;
        }
        appendFileSync(target, `${rest.join(' ')}\n`);
        status = 0;
        break;
      }
      case 'cache-fill': {
        const mib = Number(args[0]);
        if (!spec.cacheDisk || !cacheWrites || !Number.isInteger(mib) || mib < 1) {
          emit('stderr', !spec.cacheDisk ? 'cache-fill: the job has no cache disk\n' : !cacheWrites ? 'cache-fill: disabled (the driver was not given cacheWrites)\n' : `cache-fill: bad size '${args[0] ?? ''}'\n`);
          status = 2;
          break;
        }
        status = await fillCache(spec.cacheDisk, mib).then(
          () => 0,
          (e: unknown) => (emit('stderr', `cache-fill: ${(e as Error).message}\n`), 1),
        );
        break;
      }
      default: {
        const program = programs[cmd];
        if (!program) {
          emit('stderr', `sh: ${cmd}: not found\n`);
          return 127;
        }
        try {
          status = await program({ args, env: spec.job.env, stdout: (t) => emit('stdout', t), stderr: (t) => emit('stderr', t), signal });
        } catch (e) {
          emit('stderr', `${cmd}: ${(e as Error).message}\n`);
          status = 1;
        }
        break;
      }
    }
  }
  return status;
}

/** Writes `mib` MiB of patterned data (a different byte per MiB) into a cache overlay, from 5/8 of its size. */
async function fillCache(overlay: string, mib: number): Promise<void> {
  const MiB = 1024 * 1024;
  const size = qcow2VirtualSize(overlay);
  const from = Math.floor((size * 5) / 8 / MiB);
  if (mib > Math.floor((size * 0.3) / MiB)) throw new Error(`at most ${Math.floor((size * 0.3) / MiB)} MiB fit this cache's free space`);
  const cmds = Array.from({ length: mib }, (_, i) => ['-c', `write -q -P ${17 + (i % 200)} ${(from + i) * MiB} ${MiB}`]).flat();
  await new Promise<void>((ok, fail) =>
    execFile('qemu-io', ['-f', 'qcow2', ...cmds, overlay], (err, _out, stderr) => (err ? fail(new Error(`qemu-io failed: ${stderr.trim() || err.message}`)) : ok())),
  );
}
