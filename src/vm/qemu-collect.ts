/**
 * QEMU VM lifecycle, step 4 (collect): once QEMU has exited, drain the guest's output, read the console's
 * tail, and turn what the wait step recorded into the VM's result.
 */
import type { Socket } from 'node:net';
import { join } from 'node:path';
import type { VmPhase, VmResult, VmTimings } from './driver.ts';
import { readText } from './files.ts';
import { delay } from './process.ts';
import { CGROUP_JOIN_FAILED } from './qemu-launch.ts';
import type { VmSocketPaths } from './qemu-prepare.ts';
import type { VmWatch } from './qemu-wait.ts';

const CONSOLE_TAIL_LINES = 15;

export interface Collected {
  code: number | null;
  consoleTail: string[];
  /** The phase the VM was in when QEMU exited. */
  wasPhase: VmPhase;
  /** performance.now() when QEMU was gone. */
  tGone: number;
}

/** Waits (up to 5 s) for what QEMU wrote before it exited, closes our side of the sockets, reads the console's tail. */
export async function collectVm(w: VmWatch, code: number | null, vmDir: string, accepted: Record<keyof VmSocketPaths, Promise<Socket>>): Promise<Collected> {
  const tGone = performance.now();
  // Everything QEMU wrote before it exited is still readable from our side of the sockets.
  await Promise.race([Promise.all(w.outputs), delay(5000, true)]);
  for (const p of Object.values(accepted)) void p.then((s) => s.destroy());
  return { code, consoleTail: readTail(join(vmDir, 'console.log'), CONSOLE_TAIL_LINES), wasPhase: w.phase, tGone };
}

/** The VM's result from what the wait step recorded; `timings` is completed here with boot, run and teardown. */
export function vmResult(w: VmWatch, c: Collected, timings: VmTimings, tEnd: number, accel: 'kvm' | 'tcg'): VmResult {
  timings.bootMs = (w.tReady || c.tGone) - w.tSpawn;
  timings.runMs = w.tReady ? (w.tExit || w.tStop || c.tGone) - w.tReady : 0;
  timings.teardownMs = tEnd - (w.tExit || w.tStop || c.tGone);
  if (w.guestUptimeAtInitMs !== undefined) timings.guestUptimeAtInitMs = w.guestUptimeAtInitMs;
  if (w.exitCode !== undefined) return { outcome: 'exited', exitCode: w.exitCode, timings, ...(w.cacheClean ? { cacheClean: true } : {}) };
  if (w.stopReason?.kind === 'timed_out') return { outcome: 'timed_out', timings };
  if (w.stopReason?.kind === 'killed') return { outcome: 'killed', reason: w.stopReason.reason, timings };
  if (!w.tReady) {
    const bootTimedOut = w.stopReason?.kind === 'boot_timeout';
    const step = bootStep(c.consoleTail, bootTimedOut);
    const why =
      c.code === CGROUP_JOIN_FAILED
        ? 'QEMU could not join its cgroup'
        : bootTimedOut
          ? `the guest did not reach kiln-init's channel within ${Math.round(w.bootTimeoutMs / 1000)}s`
          : `QEMU exited with code ${c.code ?? 'signal'}${w.qemuStderr ? `: ${w.qemuStderr.trim().split('\n').slice(-2).join(' ')}` : ''}`;
    return {
      outcome: 'boot_failed',
      code: bootTimedOut ? 'vm.boot_timeout' : 'vm.boot_failed',
      message: `VM failed to boot (${accel}, step: ${step}): ${why}`,
      consoleTail: c.consoleTail,
      timings,
    };
  }
  return {
    outcome: 'crashed',
    code: 'vm.crashed',
    message: `the VM stopped while the job was ${c.wasPhase === 'running' ? 'running' : c.wasPhase}${w.lastStep ? ` (last step: ${w.lastStep})` : ''} without reporting an exit status`,
    consoleTail: c.consoleTail,
    timings,
  };
}

export function readTail(p: string, n: number): string[] {
  return readText(p)
    .split('\n')
    .map((l) => l.replace(/\r$/, ''))
    .filter((l) => l.trim() !== '')
    .slice(-n);
}

/** Names the furthest boot step the console shows. */
export function bootStep(console: string[], timedOut: boolean): string {
  const init = [...console].reverse().find((l) => l.includes('kiln-init: '));
  if (init) return `kiln-init ${init.slice(init.indexOf('kiln-init: ') + 11)}`;
  if (console.length > 0) return 'kernel boot (kiln-init never started)';
  return timedOut ? 'kernel boot (no console output)' : 'starting QEMU';
}
