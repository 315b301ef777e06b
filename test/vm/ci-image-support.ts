/**
 * The ci (or runner) guest image for tests: built once per machine and inputs, through the real CLI, into
 * the shared test store. Concurrent test files (and runs) serialise on a flock per profile and architecture;
 * the cache key hashes everything that goes into the image from this checkout (the build code, the guest
 * files and the extra build arguments), so a change to them rebuilds it, while an unchanged checkout reuses
 * the image by digest. The record keeps the newest few keys (RECORDS_KEPT), so checkouts with different guest
 * files (worktrees, a branch and main) each find their own image instead of rebuilding each other's.
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Arch } from '../../src/core/arch.ts';
import { makeImageStore, type ImageManifest } from '../../src/image/store.ts';
import { ensureFreshBuild } from '../agent/processes.ts';
import { KILN_BIN, REPO, SHARED_DIR } from '../support/kiln.ts';

export type BuiltProfile = 'ci' | 'runner';

function inputsKey(arch: Arch, profile: BuiltProfile, args: string[]): string {
  const h = createHash('sha256').update(`${profile} ${arch} ${JSON.stringify(args)}\n`);
  const files = ['src/image/build-ci.ts', 'src/image/actions-runner.ts', 'src/image/initramfs.ts', 'src/image/apt-sources.ts', 'src/oci/mirror-config.ts'];
  for (const f of readdirSync(join(REPO, 'src/image/guest')).sort()) files.push(`src/image/guest/${f}`);
  for (const f of files) h.update(`${f}\n`).update(readFileSync(join(REPO, f)));
  return h.digest('hex');
}

interface ImageRecord {
  key: string;
  digest: string;
  built?: string;
  seconds?: number;
}

/** How many input keys a record remembers per profile and architecture (each image is ~1 GB on disk). */
const RECORDS_KEPT = 4;

function readRecords(file: string): ImageRecord[] {
  try {
    const rec = JSON.parse(readFileSync(file, 'utf8')) as ImageRecord | { images: ImageRecord[] };
    return 'images' in rec ? rec.images : [rec]; // the older form held one record
  } catch {
    return []; // no record yet
  }
}

/** Called under the lock (see ensureCiImage): reuse the image recorded for these inputs, or build it. */
export function buildUnderLock(arch: Arch, profile: BuiltProfile = 'ci', args: string[] = []): ImageManifest {
  const store = makeImageStore(SHARED_DIR);
  const keyFile = join(SHARED_DIR, `${profile}-image-${arch}.json`);
  const key = inputsKey(arch, profile, args);
  const records = readRecords(keyFile);
  const known = records.find((r) => r.key === key);
  const m = known ? store.list().find((x) => x.digest === known.digest) : undefined;
  if (m) return m;
  const started = Date.now();
  // The build runs the CLI from dist/, while the key hashes the sources: a stale dist/ would record an image
  // built by older code under this checkout's key.
  ensureFreshBuild();
  const r = spawnSync(process.execPath, [KILN_BIN, 'image', 'build', '--profile', profile, '--arch', arch, ...args, '--data-dir', SHARED_DIR], {
    encoding: 'utf8',
    maxBuffer: 64 * 1024 * 1024,
  });
  if (r.status !== 0) throw new Error(`${profile} image build for ${arch} failed:\n${r.stderr.split('\n').slice(-30).join('\n')}`);
  const digest = r.stdout.trim().split('\n').pop() ?? '';
  const built = store.list().find((x) => x.digest === digest);
  if (!built) throw new Error(`${profile} image build printed ${digest}, which is not in the store`);
  const entry: ImageRecord = { key, digest, built: new Date().toISOString(), seconds: Math.round((Date.now() - started) / 1000) };
  const images = [entry, ...records.filter((x) => x.key !== key)].slice(0, RECORDS_KEPT);
  writeFileSync(keyFile, JSON.stringify({ images }));
  return built;
}

/** The ci (or runner) image for `arch`, built at most once at a time across every test process on this machine. */
export function ensureCiImage(arch: Arch, profile: BuiltProfile = 'ci', args: string[] = []): ImageManifest {
  mkdirSync(join(SHARED_DIR, 'images'), { recursive: true });
  const lock = join(SHARED_DIR, `${profile}-image-${arch}.lock`);
  const r = spawnSync(
    'flock',
    [lock, process.execPath, '--import', 'tsx', '--input-type=module', '-e', `import { buildUnderLock } from ${JSON.stringify(join(REPO, 'test/vm/ci-image-support.ts'))}; process.stdout.write(JSON.stringify(buildUnderLock(${JSON.stringify(arch)}, ${JSON.stringify(profile)}, ${JSON.stringify(args)})));`],
    { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024, cwd: REPO },
  );
  if (r.status !== 0) throw new Error(`could not get the ${profile} image for ${arch}:\n${r.stderr}`);
  return JSON.parse(r.stdout) as ImageManifest;
}
