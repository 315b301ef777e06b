/**
 * QEMU VM lifecycle, step 3 (wait): from launch to QEMU's exit. Streams the guest's output, waits for
 * kiln-init's READY on kiln.ctl, sends the job, records its EXIT, and enforces the boot and job limits.
 * Stopping is a QMP quit, then SIGKILL shortly after. A restored VM sends no READY: the restore step
 * (qemu-restore.ts) calls guestUp once the guest has taken its identity.
 */
import type { ChildProcess } from 'node:child_process';
import type { Socket } from 'node:net';
import type { Logger } from 'pino';
import { encodeJob, makeLineSplitter, parseGuestLine } from './channel.ts';
import type { VmOutput, VmPhase, VmSpec } from './driver.ts';
import { hasNic } from './qemu-launch.ts';
import type { PreparedVm } from './qemu-prepare.ts';
import { makeQmp, type Qmp } from './qmp.ts';

export type StopReason = { kind: 'killed'; reason: string } | { kind: 'timed_out' } | { kind: 'boot_timeout' };

/** What happened to a VM while it ran, read by the collect step once QEMU has exited. */
export interface VmWatch {
  phase: VmPhase;
  /** performance.now() marks; 0 while not reached. */
  tSpawn: number;
  tReady: number;
  tExit: number;
  tStop: number;
  guestUptimeAtInitMs?: number;
  exitCode?: number;
  stopReason?: StopReason;
  lastStep: string;
  /** kiln-init reported `STEP cache-clean`: /cache was synced and unmounted before the exit. */
  cacheClean: boolean;
  /** The first 8 KiB QEMU wrote to stderr. */
  qemuStderr: string;
  bootTimeoutMs: number;
  /** One promise per output stream, settled when QEMU's side of it closes. */
  outputs: Promise<void>[];
  /** Settles with QEMU's exit code once the process is gone (timers cleared). */
  exited: Promise<number | null>;
  stop(why: StopReason | undefined): void;
  /** QEMU's monitor, once negotiated. */
  qmp: Promise<Qmp>;
  /**
   * The guest is up: once the owner's start gate (`out.mayStart`) allows it, the job is sent on kiln.ctl (with
   * NET when the VM has a NIC) and phase becomes running; a refused gate stops the VM (`killed`).
   */
  guestUp(ctl: Socket): void;
  /** Set by the restore step: called with kiln-init's answer to the identity lines (undefined: done). */
  onIdentity?: (failed: string | undefined) => void;
}

export interface WaitOptions {
  accel: 'kvm' | 'tcg';
  /** The driver's boot limit, if set; otherwise one from the accelerator and the image. */
  bootTimeoutMs?: number;
  /** A warm start: kiln-init's READY belongs to the template, not this VM; the restore step calls guestUp. */
  restoring?: boolean;
  log: Logger | undefined;
}

/** Default boot limit: images with a root disk (the ci profile) start Docker before READY, so they get twice as long. */
export function defaultBootTimeoutMs(spec: VmSpec, accel: 'kvm' | 'tcg'): number {
  return (accel === 'kvm' ? 30_000 : spec.arch === 'amd64' ? 90_000 : 240_000) * (spec.image.rootDiskPath ? 2 : 1);
}

export function watchVm(spec: VmSpec, vm: PreparedVm, proc: ChildProcess, out: VmOutput, o: WaitOptions): VmWatch {
  const { accepted } = vm;
  let qmp: Qmp | undefined;
  const procExited = new Promise<number | null>((resolve) => proc.on('exit', (code) => resolve(code)));
  let qmpConnected: (q: Qmp) => void = () => undefined;
  let gated = false;
  const w: VmWatch = {
    phase: 'booting',
    tSpawn: performance.now(),
    tReady: 0,
    tExit: 0,
    tStop: 0,
    lastStep: '',
    cacheClean: false,
    qemuStderr: '',
    bootTimeoutMs: o.bootTimeoutMs ?? defaultBootTimeoutMs(spec, o.accel),
    outputs: [],
    exited: procExited.then((code) => {
      clearTimeout(bootTimer);
      clearTimeout(jobTimer);
      return code;
    }),
    stop(why) {
      if (w.phase === 'stopping' || w.phase === 'stopped') return;
      w.stopReason ??= why;
      w.phase = 'stopping';
      w.tStop = performance.now();
      // A graceful quit through the monitor, and SIGKILL shortly after if QEMU has not gone.
      const kill = setTimeout(() => proc.kill('SIGKILL'), qmp ? 300 : 0);
      void procExited.then(() => clearTimeout(kill));
      qmp?.execute('quit').catch(() => proc.kill('SIGKILL'));
    },
    qmp: new Promise<Qmp>((resolve) => (qmpConnected = resolve)),
    guestUp(s) {
      if (gated) return;
      gated = true;
      w.tReady = performance.now();
      clearTimeout(bootTimer);
      o.log?.debug({ bootMs: w.tReady - w.tSpawn, start: o.restoring ? 'warm' : 'cold' }, 'guest ready');
      // The command is handed to the guest only once the owner allows it (the start lease).
      void (out.mayStart?.({ start: o.restoring ? 'warm' : 'cold', bootMs: Math.round(w.tReady - w.tSpawn) }) ?? Promise.resolve()).then(
        () => {
          if (w.phase !== 'booting') return;
          w.phase = 'running';
          s.write(encodeJob(spec.job, hasNic(spec)));
          out.running?.();
        },
        (e: unknown) => w.stop({ kind: 'killed', reason: e instanceof Error ? e.message : String(e) }),
      );
    },
  };
  proc.stderr?.setEncoding('utf8').on('data', (d: string) => {
    if (w.qemuStderr.length < 8192) w.qemuStderr += d;
  });

  const streamEnded = (s: Socket) => new Promise<void>((resolve) => (s.destroyed ? resolve() : s.once('close', () => resolve())));
  void accepted.stdout.then((s) => {
    s.on('data', (d: Buffer) => out.stdout(d));
    w.outputs.push(streamEnded(s));
  });
  void accepted.stderr.then((s) => {
    s.on('data', (d: Buffer) => out.stderr(d));
    w.outputs.push(streamEnded(s));
  });
  void accepted.qmp.then(async (s) => {
    try {
      qmp = await makeQmp(s);
      qmpConnected(qmp);
      if (w.phase === 'stopping') void qmp.execute('quit').catch(() => proc.kill('SIGKILL'));
    } catch {
      /* QEMU went away during negotiation; procExited handles it */
    }
  });
  void accepted.ctl.then((s) => {
    s.on(
      'data',
      makeLineSplitter((line) => {
        const msg = parseGuestLine(line);
        if (msg.type === 'ready' && w.phase === 'booting' && !o.restoring) {
          if (Number.isFinite(msg.uptimeMs)) w.guestUptimeAtInitMs = msg.uptimeMs;
          w.guestUp(s);
        } else if (msg.type === 'step') {
          w.lastStep = msg.name;
          if (msg.name === 'cache-clean' && w.phase === 'running') w.cacheClean = true;
          if (msg.name === 'identity') w.onIdentity?.(undefined);
          else if (msg.name.startsWith('identity-failed')) w.onIdentity?.(msg.name.slice('identity-failed:'.length) || 'unknown');
        } else if (msg.type === 'exit' && w.phase === 'running') {
          w.exitCode = msg.code;
          w.tExit = performance.now();
          w.stop(undefined);
        }
      }),
    );
    s.on('error', () => undefined);
  });
  for (const p of Object.values(accepted)) void p.then((s) => s.on('error', () => undefined));

  const bootTimer = setTimeout(() => w.stop({ kind: 'boot_timeout' }), Math.min(w.bootTimeoutMs, spec.timeoutMs));
  const jobTimer = setTimeout(() => w.stop({ kind: 'timed_out' }), spec.timeoutMs);
  return w;
}
