/**
 * The minimal guest image: Debian's cloud kernel, a busybox initramfs with the virtio modules, and
 * kiln-init as PID 1. Built from Debian packages only; same packages in, same digest out.
 */
import { copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Arch } from '../core/arch.ts';
import { KilnError } from '../core/errors.ts';
import { writeCpio } from './cpio.ts';
import { debVersion, downloadDeb, extractDeb, resolveKernelPackage, unpackKernel } from './debian.ts';
import { cloneFixBinary } from './guest-helper.ts';
import { initramfsEntries, resolveGuestModules } from './initramfs.ts';
import { sha256File, type ImageManifest, type ImageStore } from './store.ts';

export { GUEST_MODULES } from './initramfs.ts';

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
    const { vmlinuzPath, kernelVersion, modRoot } = await unpackKernel(kernelDeb, kernelPkg, join(work, 'kernel'), progress);
    progress('unpacking busybox-static');
    await extractDeb(busyboxDeb, join(work, 'busybox'));

    progress('resolving kernel modules');
    const modules = resolveGuestModules(modRoot, kernelPkg);
    progress('assembling the initramfs');
    const entries = initramfsEntries({
      busybox: readFileSync(join(work, 'busybox', 'bin', 'busybox')),
      init: readFileSync(guestFile('kiln-init')),
      modRoot,
      modules,
      kernelVersion,
      extra: [{ type: 'file', path: 'sbin/kiln-clone-fix', data: cloneFixBinary(arch), mode: 0o755 }],
    });
    writeFileSync(join(staging, 'initrd.cpio'), writeCpio(entries));
    copyFileSync(vmlinuzPath, join(staging, 'vmlinuz'));
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
