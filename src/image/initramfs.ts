/**
 * The busybox initramfs shared by the guest profiles: busybox, the virtio modules (dependencies resolved
 * from each module's .modinfo, in load order) and an /init script. The minimal image runs kiln-init from
 * it; the ci image runs kiln-stage1, which mounts the root disk and switches to kiln-init there.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { KilnError } from '../core/errors.ts';
import type { CpioEntry } from './cpio.ts';
import { canonicalModuleName, moduleDepends, orderModules } from './kmod.ts';

/** Modules the guest needs for kiln's devices, dependencies resolved at build time. */
export const GUEST_MODULES = ['virtio_mmio', 'virtio_pci', 'virtio_blk', 'virtio_net', 'virtio_console', 'virtio_rng'];

export function walkFiles(dir: string, out: string[] = []): string[] {
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) walkFiles(p, out);
    else out.push(p);
  }
  return out;
}

export interface GuestModules {
  /** Paths relative to lib/modules/<version>, in insmod order. */
  files: string[];
}

/** The guest modules (and what they depend on) of the kernel tree at `modRoot`, in load order. */
export function resolveGuestModules(modRoot: string, kernelPkg: string, wanted: string[] = GUEST_MODULES): GuestModules {
  const available = new Map<string, string>();
  for (const f of walkFiles(join(modRoot, 'kernel'))) {
    if (f.endsWith('.ko')) available.set(canonicalModuleName(f.split('/').pop()!.slice(0, -3)), relative(modRoot, f));
  }
  const builtin = new Set(
    readFileSync(join(modRoot, 'modules.builtin'), 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((l) => canonicalModuleName(l.split('/').pop()!.replace(/\.ko$/, ''))),
  );
  const { order, missing } = orderModules(wanted, available, builtin, (n) => moduleDepends(readFileSync(join(modRoot, available.get(n)!))));
  if (missing.length > 0) {
    throw new KilnError('image.missing_modules', `${kernelPkg} lacks kernel modules kiln's guest needs: ${missing.join(', ')}`, { hint: 'use a Debian cloud kernel' });
  }
  return { files: order.map((n) => available.get(n)!) };
}

/** The initramfs entries, in the order the minimal image has always written them (its digest depends on it). */
export function initramfsEntries(o: { busybox: Buffer; init: Buffer; modRoot: string; modules: GuestModules; kernelVersion: string; extra?: CpioEntry[] }): CpioEntry[] {
  const entries: CpioEntry[] = [
    ...['bin', 'sbin', 'usr', 'usr/bin', 'usr/sbin', 'etc', 'etc/kiln', 'dev', 'proc', 'sys', 'tmp', 'run', 'work', 'root', 'lib', 'lib/modules'].map(
      (path): CpioEntry => ({ type: 'dir', path, mode: path === 'tmp' ? 0o1777 : 0o755 }),
    ),
    { type: 'chardev', path: 'dev/console', major: 5, minor: 1, mode: 0o600 },
    { type: 'chardev', path: 'dev/null', major: 1, minor: 3, mode: 0o666 },
    { type: 'file', path: 'bin/busybox', data: o.busybox, mode: 0o755 },
    { type: 'symlink', path: 'bin/sh', target: 'busybox' },
    { type: 'file', path: 'init', data: o.init, mode: 0o755 },
    { type: 'file', path: 'etc/kiln/modules', data: Buffer.from(o.modules.files.map((f) => `${f}\n`).join('')) },
    { type: 'file', path: 'etc/kiln/kernel-version', data: Buffer.from(`${o.kernelVersion}\n`) },
  ];
  const dirs = new Set<string>();
  for (const rel of o.modules.files) {
    const parts = rel.split('/');
    for (let i = 1; i < parts.length; i++) dirs.add(`lib/modules/${parts.slice(0, i).join('/')}`);
    entries.push({ type: 'file', path: `lib/modules/${rel}`, data: readFileSync(join(o.modRoot, rel)) });
  }
  for (const d of dirs) entries.push({ type: 'dir', path: d });
  return [...entries, ...(o.extra ?? [])];
}
