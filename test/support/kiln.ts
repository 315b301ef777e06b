/** Shared helpers for tests that run real VMs: a per-file data directory over one shared image cache. */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import type { Arch } from '../../src/core/arch.ts';
import { readCpio } from '../../src/image/cpio.ts';
import { makeImageStore, type ImageManifest } from '../../src/image/store.ts';
import { kilnQemuProcesses, vmDirs } from './leaks.ts';

export const REPO = resolve(import.meta.dirname, '../..');
export const KILN_BIN = join(REPO, 'bin', 'kiln.js');
/**
 * The node flags of bin/kiln.js's first line (`#!/usr/bin/env -S node FLAGS`): tests and benches start kiln
 * with them, as the installed `kiln` starts.
 */
export const KILN_NODE_ARGS: readonly string[] = readFileSync(KILN_BIN, 'utf8')
  .split('\n', 1)[0]!
  .split(/\s+/)
  .filter((a) => a.startsWith('--'));
/** Images and downloaded packages are shared by every test file of a run (and across runs on one machine). */
export const SHARED_DIR = process.env.KILN_TEST_SHARED_DIR ?? '/tmp/kiln-test-shared';

/** A fresh data directory whose images/ and cache/ point at the shared ones. */
export function makeTestDataDir(): { dir: string; cleanup(): void } {
  mkdirSync(join(SHARED_DIR, 'images'), { recursive: true });
  mkdirSync(join(SHARED_DIR, 'cache'), { recursive: true });
  const dir = mkdtempSync(join(tmpdir(), 'kt-'));
  symlinkSync(join(SHARED_DIR, 'images'), join(dir, 'images'));
  symlinkSync(join(SHARED_DIR, 'cache'), join(dir, 'cache'));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/**
 * Builds (once) and returns the minimal image for `arch` through the real CLI. An image whose kiln-init is
 * not this checkout's (an older build in the shared directory) does not count: tests run the current one.
 */
export function ensureImage(arch: Arch): ImageManifest {
  const store = makeImageStore(SHARED_DIR);
  const init = readFileSync(join(REPO, 'src', 'image', 'guest', 'kiln-init'));
  const current = (m: ImageManifest) => {
    try {
      return readCpio(readFileSync(store.pathOf(m, m.initrd))).some((e) => e.path === 'init' && e.data.equals(init));
    } catch {
      return false;
    }
  };
  const have = store.list().find((m) => m.profile === 'minimal' && m.arch === arch && current(m));
  if (have) return have;
  const r = spawnSync(process.execPath, [KILN_BIN, 'image', 'build', '--arch', arch, '--data-dir', SHARED_DIR], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`image build for ${arch} failed:\n${r.stderr}`);
  const m = store.list().find((x) => x.profile === 'minimal' && x.arch === arch && current(x));
  if (!m) throw new Error('image build reported success but no image with this checkout\'s kiln-init is stored');
  return m;
}

export interface CliResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: Buffer;
  stderr: Buffer;
}

/** `--data-dir` goes just before `--` (or at the end), where every subcommand accepts it. */
export function kilnArgs(dataDir: string, args: string[]): string[] {
  const sep = args.indexOf('--');
  const at = sep < 0 ? args.length : sep;
  return [...KILN_NODE_ARGS, KILN_BIN, ...args.slice(0, at), '--data-dir', dataDir, ...args.slice(at)];
}

/** Runs the real CLI to completion. */
export function runKiln(dataDir: string, args: string[], env: NodeJS.ProcessEnv = {}): Promise<CliResult> {
  return new Promise((resolvePromise) => {
    const p = spawn(process.execPath, kilnArgs(dataDir, args), { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    p.stdout.on('data', (d: Buffer) => out.push(d));
    p.stderr.on('data', (d: Buffer) => err.push(d));
    p.on('close', (code, signal) => resolvePromise({ code, signal, stdout: Buffer.concat(out), stderr: Buffer.concat(err) }));
  });
}

/**
 * Nothing of this data directory's VMs is left: no QEMU process naming it, no VM directory. (Cgroups are
 * named by VM id only; the run-wide leak check in scripts/test.mjs covers them once all files are done.)
 */
export function assertNoLeaks(dataDir: string): void {
  const leaks = [...kilnQemuProcesses().filter((l) => l.includes(`${dataDir}/`)), ...vmDirs([dataDir])];
  if (leaks.length > 0) throw new Error(`left behind:\n  ${leaks.join('\n  ')}`);
}

export function hasBinary(name: string): boolean {
  return ['/usr/bin', '/usr/sbin', '/bin', '/sbin', '/usr/local/bin'].some((d) => existsSync(join(d, name)));
}
