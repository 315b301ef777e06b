/**
 * The guest image store: immutable, content-addressed images under <dataDir>/images/<digest-hex>/,
 * each with a small manifest.json. Images are hashed once, when they enter the store and on `kiln image
 * verify`; each file's hash is sealed with its stat (src/vm/seal.ts), so a boot checks only that stat.
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Arch } from '../core/arch.ts';
import { KilnError } from '../core/errors.ts';
import type { GuestImageRef } from '../vm/driver.ts';
import { sha256File } from '../vm/files.ts';
import { checkSealed, seal } from '../vm/seal.ts';

export { sha256File };

/** minimal: kernel + busybox; ci: Debian with Docker and build tools; runner: ci plus the GitHub Actions runner. */
export const PROFILES = ['minimal', 'ci', 'runner'] as const;
export type Profile = (typeof PROFILES)[number];

export interface ImageFile {
  name: string;
  sha256: string;
  size: number;
}

export interface ImageManifest {
  /** sha256:<hex> over the canonical description of the image's content (see imageDigest). */
  digest: string;
  arch: Arch;
  profile: Profile;
  kernelVersion: string;
  /** Debian packages (name=version) the image was made from. */
  packages: string[];
  created: string;
  kernel: ImageFile;
  initrd: ImageFile;
  rootDisk?: ImageFile;
  cmdline?: string[];
}

type Content = Pick<ImageManifest, 'arch' | 'profile' | 'kernel' | 'initrd' | 'rootDisk' | 'cmdline'>;

/** The digest covers exactly what boots: files by hash, the kernel command line, arch and profile. */
export function imageDigest(c: Content): string {
  const canonical = JSON.stringify({
    arch: c.arch,
    profile: c.profile,
    kernel: c.kernel.sha256,
    initrd: c.initrd.sha256,
    rootDisk: c.rootDisk?.sha256 ?? null,
    cmdline: c.cmdline ?? [],
  });
  return `sha256:${createHash('sha256').update(canonical).digest('hex')}`;
}

/** How to get the image `ref` names: the build command for a profile name, else where to look. */
export function imageBuildHint(ref: string, arch: Arch): string {
  if (!(PROFILES as readonly string[]).includes(ref)) return 'see `kiln image ls`, or build one with `kiln image build`';
  const runner = ref === 'runner' ? ' --runner-tarball <actions-runner-linux-*.tar.gz path or URL> --runner-sha256 <checksum>' : '';
  return `build it with \`kiln image build --profile ${ref} --arch ${arch}${runner}\`${ref === 'minimal' ? '' : ' (as root)'}`;
}

export function shortId(digest: string): string {
  return digest.replace(/^sha256:/, '').slice(0, 12);
}


export interface ImageStore {
  readonly dir: string;
  list(): ImageManifest[];
  /** By digest, digest prefix (at least 4 hex digits), or profile name (newest of that profile and arch). */
  resolve(ref: string, arch: Arch): ImageManifest | undefined;
  newest(profile: Profile, arch: Arch): ImageManifest | undefined;
  pathOf(m: ImageManifest, file: ImageFile): string;
  /** Moves a finished build directory into the store; returns the stored manifest (existing one if the digest is known). */
  commit(stagingDir: string, m: Omit<ImageManifest, 'digest'>): ImageManifest;
  remove(m: ImageManifest): void;
  /** Hashes every file again and checks it against its recorded hash; throws image.corrupt naming the file. */
  verify(m: ImageManifest): Promise<void>;
  /** The cheap check before a boot: each file's seal (hashing only a file whose stat changed). */
  check(m: ImageManifest): Promise<void>;
  toRef(m: ImageManifest): GuestImageRef;
  stagingDir(): string;
}

export function makeImageStore(dataDir: string): ImageStore {
  const dir = join(dataDir, 'images');
  const imageDir = (digest: string) => join(dir, digest.replace(/^sha256:/, ''));
  const readManifest = (d: string): ImageManifest | undefined => {
    try {
      return JSON.parse(readFileSync(join(d, 'manifest.json'), 'utf8')) as ImageManifest;
    } catch {
      return undefined;
    }
  };
  const list = (): ImageManifest[] => {
    if (!existsSync(dir)) return [];
    const out: ImageManifest[] = [];
    for (const e of readdirSync(dir)) {
      if (!/^[0-9a-f]{64}$/.test(e)) continue;
      const m = readManifest(join(dir, e));
      if (m) out.push(m);
    }
    return out.sort((a, b) => (a.created < b.created ? 1 : a.created > b.created ? -1 : 0));
  };
  const files = (m: ImageManifest): ImageFile[] => [m.kernel, m.initrd, ...(m.rootDisk ? [m.rootDisk] : [])];
  const store: ImageStore = {
    dir,
    list,
    newest: (profile, arch) => list().find((m) => m.profile === profile && m.arch === arch),
    resolve(ref, arch) {
      if ((PROFILES as readonly string[]).includes(ref)) return store.newest(ref as Profile, arch);
      const hex = ref.replace(/^sha256:/, '').toLowerCase();
      if (!/^[0-9a-f]{4,64}$/.test(hex)) return undefined;
      const matches = list().filter((m) => m.digest.slice(7).startsWith(hex));
      if (matches.length > 1) {
        throw new KilnError('image.ambiguous', `image id "${ref}" matches ${matches.length} images`, { hint: 'give more digits of the digest (see `kiln image ls`)' });
      }
      return matches[0];
    },
    pathOf: (m, f) => join(imageDir(m.digest), f.name),
    stagingDir() {
      mkdirSync(dir, { recursive: true });
      const p = join(dir, `.staging-${process.pid}-${Date.now().toString(36)}`);
      mkdirSync(p);
      return p;
    },
    commit(stagingDir, partial) {
      const digest = imageDigest(partial);
      const m: ImageManifest = { ...partial, digest };
      const target = imageDir(digest);
      if (existsSync(join(target, 'manifest.json'))) {
        rmSync(stagingDir, { recursive: true, force: true });
        return readManifest(target) ?? m;
      }
      writeFileSync(join(stagingDir, 'manifest.json'), `${JSON.stringify(m, null, 2)}\n`);
      rmSync(target, { recursive: true, force: true });
      for (const f of [m.kernel, m.initrd, ...(m.rootDisk ? [m.rootDisk] : [])]) seal(join(stagingDir, f.name), f.sha256);
      try {
        renameSync(stagingDir, target);
      } catch (e) {
        // Another build of the same content finished first: keep theirs.
        rmSync(stagingDir, { recursive: true, force: true });
        const theirs = readManifest(target);
        if (!theirs) throw e;
        return theirs;
      }
      return m;
    },
    remove(m) {
      rmSync(imageDir(m.digest), { recursive: true, force: true });
    },
    async verify(m) {
      for (const f of files(m)) {
        const p = store.pathOf(m, f);
        let actual: string;
        try {
          if (statSync(p).size !== f.size) throw new Error('size differs');
          actual = await sha256File(p);
        } catch (e) {
          throw new KilnError('image.corrupt', `image ${shortId(m.digest)} is damaged: ${f.name} is missing or has the wrong size`, {
            hint: `remove it with \`kiln image rm ${shortId(m.digest)}\` and build it again with \`kiln image build --arch ${m.arch} --profile ${m.profile}\``,
            cause: e,
          });
        }
        if (actual !== f.sha256) {
          throw new KilnError('image.corrupt', `image ${shortId(m.digest)} is damaged: ${f.name} does not match its digest`, {
            hint: `remove it with \`kiln image rm ${shortId(m.digest)}\` and build it again with \`kiln image build --arch ${m.arch} --profile ${m.profile}\``,
          });
        }
        seal(p, f.sha256);
      }
    },
    async check(m) {
      for (const f of files(m)) {
        const ok = await checkSealed(store.pathOf(m, f), f.sha256).catch(() => false);
        if (!ok) {
          throw new KilnError('image.corrupt', `image ${shortId(m.digest)} is damaged: ${f.name} is missing or does not match its digest`, {
            hint: `remove it with \`kiln image rm ${shortId(m.digest)}\` and build it again with \`kiln image build --arch ${m.arch} --profile ${m.profile}\``,
          });
        }
      }
    },
    toRef(m) {
      return {
        digest: m.digest,
        arch: m.arch,
        kernelPath: store.pathOf(m, m.kernel),
        initrdPath: store.pathOf(m, m.initrd),
        kernelSha256: m.kernel.sha256,
        initrdSha256: m.initrd.sha256,
        ...(m.rootDisk ? { rootDiskPath: store.pathOf(m, m.rootDisk), rootDiskSha256: m.rootDisk.sha256 } : {}),
        ...(m.cmdline ? { cmdline: m.cmdline } : {}),
      };
    },
  };
  return store;
}
