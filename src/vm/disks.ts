/**
 * Per-VM disks: a copy-on-write qcow2 overlay of the requested size on a read-only, pre-formatted ext4
 * base (one base per size, made once and shared), so a VM's scratch disk costs one small file.
 */
import { spawn } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, renameSync, rmSync, statfsSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { KilnError } from '../core/errors.ts';
import { formatSize } from '../core/sizes.ts';
import { qcow2VirtualSize, writeQcow2Overlay } from './qcow2.ts';

function run(cmd: string, args: string[], pkg: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    p.stderr.on('data', (d: Buffer) => (err += d.toString()));
    p.on('error', (e: NodeJS.ErrnoException) =>
      reject(
        e.code === 'ENOENT'
          ? new KilnError('host.missing_command', `\`${cmd}\` is not installed`, { hint: `install the Debian package ${pkg} (or run \`kiln setup\`)` })
          : e,
      ),
    );
    p.on('close', (code) =>
      code === 0 ? resolve() : reject(new KilnError('vm.disk_failed', `${cmd} failed: ${err.trim()}`, { kind: 'internal' })),
    );
  });
}

export function freeBytes(dir: string): number {
  const s = statfsSync(dir);
  return Number(s.bavail) * Number(s.bsize);
}

/** The shared, read-only, formatted base for a scratch disk of `bytes`. Safe against concurrent callers. */
export function ensureScratchBase(cacheDir: string, bytes: number): Promise<string> {
  return ensureExt4Base(cacheDir, bytes, 'kiln-work', 'scratch');
}

/**
 * An empty, read-only ext4 image of `bytes` with this label, made once per size and kind. Safe against
 * concurrent callers. `journal: false` makes it without a journal (its name says so: a base made with one is
 * never taken for it).
 */
export async function ensureExt4Base(cacheDir: string, bytes: number, label: string, kind: string, o: { journal?: boolean } = {}): Promise<string> {
  mkdirSync(cacheDir, { recursive: true });
  const journal = o.journal ?? true;
  const base = join(cacheDir, `${kind}-ext4${journal ? '' : '-nojournal'}-${bytes}.raw`);
  if (existsSync(base)) return base;
  const tmp = `${base}.${process.pid}.${Date.now()}.tmp`;
  try {
    writeFileSync(tmp, '');
    truncateSync(tmp, bytes);
    await run('mkfs.ext4', ['-q', '-F', '-m', '0', '-L', label, ...(journal ? [] : ['-O', '^has_journal']), '-E', 'lazy_itable_init=1,lazy_journal_init=1,nodiscard', tmp], 'e2fsprogs');
    chmodSync(tmp, 0o444);
    renameSync(tmp, base);
  } finally {
    rmSync(tmp, { force: true });
  }
  return base;
}

export function checkDiskSpace(dir: string, bytes: number): void {
  const free = freeBytes(dir);
  if (free < bytes) {
    throw new KilnError('input.disk_too_large', `a ${formatSize(bytes)} VM disk does not fit: ${formatSize(free)} is free under ${dir}`, {
      hint: 'ask for a smaller --disk, or free space on that file system',
    });
  }
}

/**
 * A copy-on-write overlay whose writes never touch `backing`: `bytes` big, or as big as the backing disk.
 * Written in-process (src/vm/qcow2.ts): starting qemu-img cost 60-300 ms of every VM's prepare here.
 */
export async function createOverlay(path: string, backing: string, backingFormat: 'raw' | 'qcow2', bytes?: number): Promise<void> {
  if (!existsSync(backing)) throw new KilnError('vm.disk_failed', `the backing disk ${backing} is missing`, { kind: 'internal' });
  const size = bytes ?? (backingFormat === 'raw' ? statSync(backing).size : qcow2VirtualSize(backing));
  writeQcow2Overlay(path, resolve(backing), backingFormat, size);
  await Promise.resolve();
}
