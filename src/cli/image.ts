import type { Command } from 'commander';
import { parseArch, archFromNode, type Arch } from '../core/arch.ts';
import { KilnError } from '../core/errors.ts';
import { formatSize } from '../core/sizes.ts';
import { buildCiImage, CI_REPRODUCIBILITY_NOTE } from '../image/build-ci.ts';
import { buildMinimalImage } from '../image/build-minimal.ts';
import { makeImageStore, PROFILES, shortId, type ImageManifest, type ImageStore, type Profile } from '../image/store.ts';
import { join } from 'node:path';
import { makeSnapshotStore } from '../vm/snapshot-store.ts';
import { loadCommonConfig } from './config.ts';
import { table, type Output } from './output.ts';

export function hostArch(): Arch {
  const a = archFromNode(process.arch);
  if (!a) throw new KilnError('host.unsupported_arch', `kiln does not run on ${process.arch} hosts`, { hint: 'use an x86-64 or arm64 host' });
  return a;
}

export function parseProfile(text: string): Profile {
  if (!(PROFILES as readonly string[]).includes(text)) {
    throw new KilnError('input.unknown_profile', `unknown image profile "${text}"`, { hint: `use one of: ${PROFILES.join(', ')}` });
  }
  return text as Profile;
}

export interface RunnerSource {
  source: string;
  sha256: string;
}

export async function buildImage(dataDir: string, store: ImageStore, arch: Arch, profile: Profile, out: Output, runner?: RunnerSource): Promise<ImageManifest> {
  const started = Date.now();
  const opts = { arch, store, cacheDir: join(dataDir, 'cache'), progress: (l: string) => out.progress(l) };
  if (profile === 'runner') runner ??= parseRunnerFlags(profile, {});
  const m = profile === 'minimal' ? await buildMinimalImage(opts) : await buildCiImage({ ...opts, ...(profile === 'runner' && runner ? { runner } : {}) });
  out.done();
  const size = m.kernel.size + m.initrd.size + (m.rootDisk?.size ?? 0);
  const parts = m.rootDisk
    ? `kernel ${m.kernelVersion}, ${formatSize(size)}: root disk ${formatSize(m.rootDisk.size)} qcow2, ${m.packages.length} packages`
    : `kernel ${m.kernelVersion}, ${formatSize(size)}`;
  out.info(`built ${profile} image ${shortId(m.digest)} for ${arch} (${parts}) in ${((Date.now() - started) / 1000).toFixed(1)}s`);
  if (profile !== 'minimal') out.info(`reproducibility: ${CI_REPRODUCIBILITY_NOTE}`);
  return m;
}

/** The runner tarball flags: required with --profile runner, refused with the others. */
export function parseRunnerFlags(profile: Profile, o: { runnerTarball?: string; runnerSha256?: string }): RunnerSource | undefined {
  const tarball = o.runnerTarball ?? process.env.KILN_RUNNER_TARBALL;
  const sha256 = o.runnerSha256 ?? process.env.KILN_RUNNER_SHA256;
  if (profile !== 'runner') {
    if (o.runnerTarball || o.runnerSha256) {
      throw new KilnError('input.runner_flags', `--runner-tarball and --runner-sha256 belong to --profile runner, not ${profile}`, { hint: 'add --profile runner, or leave the runner flags out' });
    }
    return undefined;
  }
  if (!tarball || !sha256) {
    throw new KilnError('input.runner_flags', 'the runner profile needs the Actions runner release tarball and its SHA-256', {
      hint:
        'pass --runner-tarball <path or https URL of actions-runner-linux-<x64|arm64>-<version>.tar.gz> --runner-sha256 <checksum from the release notes> ' +
        '(or set KILN_RUNNER_TARBALL and KILN_RUNNER_SHA256)',
    });
  }
  return { source: tarball, sha256 };
}

export function registerImage(program: Command, out: () => Output): void {
  const image = program.command('image').description('build and manage guest images');
  image
    .command('build')
    .description('build a guest image from Debian packages (content-addressed: same inputs, same digest)')
    .option('--arch <arch>', 'guest architecture: amd64 or arm64 (default: the host)')
    .option(
      '--profile <profile>',
      'image profile: minimal (kernel + busybox + kiln-init), ci (Debian with Docker, buildah, git, build-essential; needs root) or runner (ci plus the GitHub Actions runner; needs root)',
      'minimal',
    )
    .option('--runner-tarball <path|url>', 'runner profile: the Actions runner release tarball, a path or https URL (env KILN_RUNNER_TARBALL)')
    .option('--runner-sha256 <hex>', 'runner profile: the tarball\'s SHA-256, checked before anything is unpacked (env KILN_RUNNER_SHA256)')
    .option('--data-dir <dir>', 'kiln data directory (env KILN_DATA_DIR)')
    .action(async (o: { arch?: string; profile: string; runnerTarball?: string; runnerSha256?: string; dataDir?: string }) => {
      const cfg = loadCommonConfig(o);
      const arch = o.arch ? parseArch(o.arch) : hostArch();
      const profile = parseProfile(o.profile);
      const runner = parseRunnerFlags(profile, o);
      const m = await buildImage(cfg.dataDir, makeImageStore(cfg.dataDir), arch, profile, out(), runner);
      out().data(m.digest);
    });
  image
    .command('ls')
    .description('list guest images')
    .option('--json', 'print JSON')
    .option('--data-dir <dir>', 'kiln data directory (env KILN_DATA_DIR)')
    .action((o: { json?: boolean; dataDir?: string }) => {
      const cfg = loadCommonConfig(o);
      const list = makeImageStore(cfg.dataDir).list();
      if (o.json) return out().data(JSON.stringify(list, null, 2));
      const rows = [['ID', 'ARCH', 'PROFILE', 'KERNEL', 'SIZE', 'CREATED']];
      for (const m of list) {
        const size = m.kernel.size + m.initrd.size + (m.rootDisk?.size ?? 0);
        rows.push([shortId(m.digest), m.arch, m.profile, m.kernelVersion, formatSize(size), m.created.replace(/\.\d+Z$/, 'Z')]);
      }
      out().data(table(rows));
    });
  image
    .command('rm')
    .description('remove guest images')
    .argument('<id...>', 'image ids (digest prefixes)')
    .option('--data-dir <dir>', 'kiln data directory (env KILN_DATA_DIR)')
    .action((ids: string[], o: { dataDir?: string }) => {
      const cfg = loadCommonConfig(o);
      const store = makeImageStore(cfg.dataDir);
      const found = ids.map((id) => {
        const m = /^[0-9a-f]{4,64}$|^sha256:/.test(id) ? store.list().filter((x) => x.digest.slice(7).startsWith(id.replace(/^sha256:/, ''))) : [];
        if (m.length !== 1) {
          throw new KilnError('image.not_found', m.length > 1 ? `image id "${id}" is ambiguous` : `no image "${id}"`, { hint: 'see `kiln image ls` for ids' });
        }
        return m[0]!;
      });
      const snapshots = makeSnapshotStore(cfg.dataDir);
      for (const m of found) {
        store.remove(m);
        const snaps = snapshots.removeForImage(m.digest);
        out().data(`removed ${shortId(m.digest)}${snaps.length > 0 ? ` and its ${snaps.length} warm-start snapshot(s)` : ''}`);
      }
    });
  image
    .command('verify')
    .description('hash every file of the images (and their warm-start snapshots) again; runs check only what changed since')
    .argument('[id...]', 'image ids (digest prefixes) or profile names; default: every image')
    .option('--data-dir <dir>', 'kiln data directory (env KILN_DATA_DIR)')
    .action(async (ids: string[], o: { dataDir?: string }) => {
      const cfg = loadCommonConfig(o);
      const store = makeImageStore(cfg.dataDir);
      const images = ids.length === 0 ? store.list() : ids.map((id) => {
        const m = store.resolve(id, hostArch()) ?? store.list().find((x) => x.digest.slice(7).startsWith(id));
        if (!m) throw new KilnError('image.not_found', `no image "${id}"`, { hint: 'see `kiln image ls` for ids' });
        return m;
      });
      let bad = 0;
      for (const m of images) {
        try {
          await store.verify(m);
          out().data(`ok ${shortId(m.digest)}`);
        } catch (e) {
          bad++;
          out().warn((e as Error).message);
        }
      }
      const r = await makeSnapshotStore(cfg.dataDir).verifyAll();
      for (const x of r.removed) out().warn(`snapshot ${x.id.slice(0, 12)} was damaged (${x.why}): removed; the next job rebuilds it`);
      if (bad > 0) throw new KilnError('image.corrupt', `${bad} image(s) are damaged`, { hint: 'remove them with `kiln image rm` and build them again' });
    });
}
