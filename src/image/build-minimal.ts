/**
 * The minimal guest image: Debian's cloud kernel, a busybox initramfs with the virtio modules, and
 * kiln-init as PID 1. Built from Debian packages only; same packages in, same digest out.
 */
import { copyFileSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Arch } from '../core/arch.ts';
import { KilnError } from '../core/errors.ts';
import { writeCpio, type CpioEntry } from './cpio.ts';
import { debVersion, downloadDeb, extractDeb, resolveKernelPackage } from './debian.ts';
import { canonicalModuleName, moduleDepends, orderModules } from './kmod.ts';
import { sha256File, type ImageManifest, type ImageStore } from './store.ts';

/** Modules the guest needs for kiln's devices, dependencies resolved at build time. */
export const GUEST_MODULES = ['virtio_mmio', 'virtio_pci', 'virtio_blk', 'virtio_net', 'virtio_console', 'virtio_rng'];

export function guestFile(name: string): string {
  // From src/image/*.ts this is src/image/guest/; from the bundle (dist/kiln.mjs or a chunk in
  // dist/chunks/) it is dist/guest/, which the build copies from src/image/guest/.
  const candidates = [new URL(`./guest/${name}`, import.meta.url), new URL(`../guest/${name}`, import.meta.url)];
  for (const c of candidates) {
    const p = fileURLToPath(c);
    if (existsSync(p)) return p;
  }
  throw new KilnError('image.missing_guest_file', `kiln's guest file ${name} is missing from this installation`, {
    hint: 'reinstall kiln (`npm install` in the checkout rebuilds dist/)',
    kind: 'internal',
  });
}

function walk(dir: string, out: string[] = []): string[] {
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) walk(p, out);
    else out.push(p);
  }
  return out;
}

export interface BuildOptions {
  arch: Arch;
  store: ImageStore;
  cacheDir: string;
  progress: (line: string) => void;
}

export async function buildMinimalImage(opts: BuildOptions): Promise<ImageManifest> {
  const { arch, store, progress } = opts;
  progress(`resolving Debian packages for ${arch}`);
  const kernelPkg = await resolveKernelPackage(arch);
  const debDir = join(opts.cacheDir, 'debs', arch);
  const kernelDeb = await downloadDeb(kernelPkg, arch, debDir, progress);
  const busyboxDeb = await downloadDeb('busybox-static', arch, debDir, progress);
  const work = mkdtempSync(join(opts.cacheDir, 'build-'));
  const staging = store.stagingDir();
  try {
    progress(`unpacking ${kernelPkg}`);
    await extractDeb(kernelDeb, join(work, 'kernel'));
    progress('unpacking busybox-static');
    await extractDeb(busyboxDeb, join(work, 'busybox'));

    const boot = join(work, 'kernel', 'boot');
    const vmlinuz = readdirSync(boot).find((f) => f.startsWith('vmlinuz-'));
    if (!vmlinuz) throw new KilnError('image.bad_kernel_package', `${kernelPkg} has no /boot/vmlinuz-*`, { hint: 'check the Debian archive this host uses' });
    const kernelVersion = vmlinuz.slice('vmlinuz-'.length);
    const modRoot = join(work, 'kernel', 'lib', 'modules', kernelVersion);

    progress('resolving kernel modules');
    const available = new Map<string, string>();
    for (const f of walk(join(modRoot, 'kernel'))) {
      if (f.endsWith('.ko')) available.set(canonicalModuleName(f.split('/').pop()!.slice(0, -3)), relative(modRoot, f));
    }
    const builtin = new Set(
      readFileSync(join(modRoot, 'modules.builtin'), 'utf8')
        .split('\n')
        .filter(Boolean)
        .map((l) => canonicalModuleName(l.split('/').pop()!.replace(/\.ko$/, ''))),
    );
    const { order, missing } = orderModules(GUEST_MODULES, available, builtin, (n) => moduleDepends(readFileSync(join(modRoot, available.get(n)!))));
    if (missing.length > 0) {
      throw new KilnError('image.missing_modules', `${kernelPkg} lacks kernel modules kiln's guest needs: ${missing.join(', ')}`, { hint: 'use a Debian cloud kernel' });
    }

    progress('assembling the initramfs');
    const busybox = readFileSync(join(work, 'busybox', 'bin', 'busybox'));
    const entries: CpioEntry[] = [
      ...['bin', 'sbin', 'usr', 'usr/bin', 'usr/sbin', 'etc', 'etc/kiln', 'dev', 'proc', 'sys', 'tmp', 'run', 'work', 'root', 'lib', 'lib/modules'].map(
        (path): CpioEntry => ({ type: 'dir', path, mode: path === 'tmp' ? 0o1777 : 0o755 }),
      ),
      { type: 'chardev', path: 'dev/console', major: 5, minor: 1, mode: 0o600 },
      { type: 'chardev', path: 'dev/null', major: 1, minor: 3, mode: 0o666 },
      { type: 'file', path: 'bin/busybox', data: busybox, mode: 0o755 },
      { type: 'symlink', path: 'bin/sh', target: 'busybox' },
      { type: 'file', path: 'init', data: readFileSync(guestFile('kiln-init')), mode: 0o755 },
      { type: 'file', path: 'etc/kiln/modules', data: Buffer.from(order.map((n) => `${available.get(n)}\n`).join('')) },
      { type: 'file', path: 'etc/kiln/kernel-version', data: Buffer.from(`${kernelVersion}\n`) },
    ];
    const dirs = new Set<string>();
    for (const n of order) {
      const rel = available.get(n)!;
      const parts = rel.split('/');
      for (let i = 1; i < parts.length; i++) dirs.add(`lib/modules/${parts.slice(0, i).join('/')}`);
      entries.push({ type: 'file', path: `lib/modules/${rel}`, data: readFileSync(join(modRoot, rel)) });
    }
    for (const d of dirs) entries.push({ type: 'dir', path: d });

    writeFileSync(join(staging, 'initrd.cpio'), writeCpio(entries));
    copyFileSync(join(boot, vmlinuz), join(staging, 'vmlinuz'));
    progress('hashing');
    const file = async (name: string) => ({ name, sha256: await sha256File(join(staging, name)), size: statSync(join(staging, name)).size });
    const manifest = store.commit(staging, {
      arch,
      profile: 'minimal',
      kernelVersion,
      packages: [`${kernelPkg}=${await debVersion(kernelDeb)}`, `busybox-static=${await debVersion(busyboxDeb)}`],
      created: new Date().toISOString(),
      kernel: await file('vmlinuz'),
      initrd: await file('initrd.cpio'),
    });
    return manifest;
  } catch (e) {
    rmSync(staging, { recursive: true, force: true });
    throw e;
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}
