/**
 * Configuration: the only code that reads process.env. Precedence: flag > env (KILN_*) > file > default.
 * Each process calls one load function once and passes the resolved object down explicitly.
 */
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import { KilnError } from '../core/errors.ts';
import { parseAllowEntry } from '../vm/egress.ts';
import { parseDuration, parseSize } from '../core/sizes.ts';

export interface CommonConfig {
  /** Where kiln keeps images, VM directories, the embedded database and caches. */
  dataDir: string;
  logLevel: string;
}

export function defaultDataDir(env: NodeJS.ProcessEnv): string {
  if (env.KILN_DATA_DIR) return resolve(env.KILN_DATA_DIR);
  if (process.getuid?.() === 0) return '/var/lib/kiln';
  return join(env.XDG_DATA_HOME ?? join(homedir(), '.local', 'share'), 'kiln');
}

export function loadCommonConfig(flags: { dataDir?: string; logLevel?: string }, env: NodeJS.ProcessEnv = process.env): CommonConfig {
  return {
    dataDir: flags.dataDir ? resolve(flags.dataDir) : defaultDataDir(env),
    logLevel: flags.logLevel ?? env.KILN_LOG_LEVEL ?? 'info',
  };
}

export interface VmConfig {
  accel: 'auto' | 'kvm' | 'tcg';
  /** QEMU start to kiln-init's READY; undefined: the driver's default for the accelerator. */
  bootTimeoutMs: number | undefined;
  /** Guest egress (docs/network.md): what every VM on this host may reach beyond the internet, or no filter at all. */
  egress: { allow: string[]; unfiltered: boolean };
  /** Disk budget of the warm-start snapshot store (KILN_SNAPSHOT_BUDGET, a size); undefined: 4G. */
  snapshotBudgetBytes: number | undefined;
  /** Agents restore job VMs from snapshots they build ahead of need (KILN_WARM_STARTS=on, the default, or off). */
  warmStarts: boolean;
  /** Disk budget of the warm cache disks on this host (KILN_CACHE_BUDGET, a size); undefined: 20G. */
  cacheBudgetBytes: number | undefined;
  /** Cache retention (KILN_CACHE_MAX_IDLE, a duration such as 14d): caches unused this long go; undefined: budget only. */
  cacheMaxIdleMs: number | undefined;
  /** Test-only (KILN_TEST_HOLD_CACHE_COMMIT=1): a cache commit stops before its pointer is renamed, so a test can kill it there. */
  holdCacheCommits: boolean;
}

/**
 * KILN_ACCEL (auto|kvm|tcg), KILN_BOOT_TIMEOUT (a duration such as 90s), KILN_EGRESS_ALLOW (CIDRs and host
 * names, comma-separated), KILN_EGRESS (filtered, the default, or unfiltered), KILN_SNAPSHOT_BUDGET (a size
 * such as 4G), KILN_WARM_STARTS (on, the default, or off: the agent's warm starts), KILN_CACHE_BUDGET (a size,
 * the host's budget for cache disks), KILN_CACHE_MAX_IDLE (a duration: caches unused that long are removed)
 * and, for tests only, KILN_TEST_HOLD_CACHE_COMMIT=1.
 */
export function loadVmConfig(env: NodeJS.ProcessEnv = process.env): VmConfig {
  const problems: string[] = [];
  const accelText = env.KILN_ACCEL ?? 'auto';
  if (!['auto', 'kvm', 'tcg', ''].includes(accelText)) problems.push(`KILN_ACCEL="${accelText}" is not one of auto, kvm, tcg`);
  let bootTimeoutMs: number | undefined;
  if (env.KILN_BOOT_TIMEOUT) {
    try {
      bootTimeoutMs = parseDuration(env.KILN_BOOT_TIMEOUT, 'KILN_BOOT_TIMEOUT');
    } catch (e) {
      problems.push((e as Error).message);
    }
  }
  const allow = (env.KILN_EGRESS_ALLOW ?? '').split(/[\s,]+/).filter(Boolean);
  for (const a of allow) {
    try {
      parseAllowEntry(a);
    } catch (e) {
      problems.push(`KILN_EGRESS_ALLOW: ${(e as Error).message}`);
    }
  }
  const egressText = env.KILN_EGRESS || 'filtered';
  if (egressText !== 'filtered' && egressText !== 'unfiltered') problems.push(`KILN_EGRESS="${egressText}" is not filtered or unfiltered`);
  let snapshotBudgetBytes: number | undefined;
  if (env.KILN_SNAPSHOT_BUDGET) {
    try {
      snapshotBudgetBytes = parseSize(env.KILN_SNAPSHOT_BUDGET, 'KILN_SNAPSHOT_BUDGET');
    } catch (e) {
      problems.push((e as Error).message);
    }
  }
  const warmText = env.KILN_WARM_STARTS || 'on';
  if (warmText !== 'on' && warmText !== 'off') problems.push(`KILN_WARM_STARTS="${warmText}" is not on or off`);
  let cacheBudgetBytes: number | undefined;
  if (env.KILN_CACHE_BUDGET) {
    try {
      cacheBudgetBytes = parseSize(env.KILN_CACHE_BUDGET, 'KILN_CACHE_BUDGET');
    } catch (e) {
      problems.push((e as Error).message);
    }
  }
  let cacheMaxIdleMs: number | undefined;
  if (env.KILN_CACHE_MAX_IDLE) {
    try {
      cacheMaxIdleMs = parseDuration(env.KILN_CACHE_MAX_IDLE, 'KILN_CACHE_MAX_IDLE');
    } catch (e) {
      problems.push((e as Error).message);
    }
  }
  if (problems.length > 0) throw new KilnError('config.invalid', problems.join('; '), { hint: 'fix the environment variables named above' });
  return {
    warmStarts: warmText === 'on',
    accel: (accelText || 'auto') as VmConfig['accel'],
    bootTimeoutMs,
    egress: { allow, unfiltered: egressText === 'unfiltered' },
    snapshotBudgetBytes,
    cacheBudgetBytes,
    cacheMaxIdleMs,
    holdCacheCommits: env.KILN_TEST_HOLD_CACHE_COMMIT === '1',
  };
}

/** The control-plane server `kiln run` submits to instead of running the VM itself (KILN_SERVER). */
/**
 * Test-only: KILN_TEST_MEMORY_APPEND_DIR lets the simulated (memory) driver's `append` program write inside
 * that one directory, so a test that runs `kiln up --driver memory` as a process can count real executions.
 * Unset (always, outside tests), the memory driver touches no host file.
 */
export function memoryDriverTestAppendDir(env: NodeJS.ProcessEnv = process.env): string | undefined {
  const dir = env.KILN_TEST_MEMORY_APPEND_DIR;
  return dir !== undefined && dir !== '' ? dir : undefined;
}

/**
 * Test-only: KILN_TEST_MEMORY_CACHES=1 gives an agent on the simulated (memory) driver a real cache store under
 * its data directory and lets its guests' `cache-fill` write into their cache disks (cache transfer tests run
 * agents as processes). Unset, a memory-driver host keeps no caches.
 */
export function memoryDriverTestCaches(env: NodeJS.ProcessEnv = process.env): boolean {
  return env.KILN_TEST_MEMORY_CACHES === '1';
}

/**
 * Host-to-host cache transfers (docs/caches.md): KILN_CACHE_FETCH_TIMEOUT (seconds a job waits at most for a
 * peer's version; default 300), and test-only KILN_TEST_HOLD_CACHE_SEND=N (a sending agent stops after N chunks).
 */
export function loadCacheTransferConfig(env: NodeJS.ProcessEnv = process.env): { fetchTimeoutMs?: number; holdSendAfterChunks?: number } {
  const problems: string[] = [];
  const out: { fetchTimeoutMs?: number; holdSendAfterChunks?: number } = {};
  if (env.KILN_CACHE_FETCH_TIMEOUT) {
    const s = Number(env.KILN_CACHE_FETCH_TIMEOUT);
    if (!Number.isFinite(s) || s <= 0 || s > 86_400) problems.push(`KILN_CACHE_FETCH_TIMEOUT="${env.KILN_CACHE_FETCH_TIMEOUT}" is not a number of seconds (0-86400)`);
    else out.fetchTimeoutMs = s * 1000;
  }
  if (env.KILN_TEST_HOLD_CACHE_SEND) {
    const n = Number(env.KILN_TEST_HOLD_CACHE_SEND);
    if (!Number.isInteger(n) || n < 0) problems.push(`KILN_TEST_HOLD_CACHE_SEND="${env.KILN_TEST_HOLD_CACHE_SEND}" is not a whole number`);
    else out.holdSendAfterChunks = n;
  }
  if (problems.length > 0) throw new KilnError('config.invalid', problems.join('; '), { hint: 'fix the environment variables named above' });
  return out;
}

export function remoteServer(env: NodeJS.ProcessEnv = process.env): string | undefined {
  return env.KILN_SERVER?.trim() || undefined;
}
