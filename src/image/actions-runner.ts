/**
 * The runner image profile: puts the GitHub Actions runner into a guest root file system, from a release
 * tarball given by path or URL and checked against its SHA-256 before anything is unpacked, plus
 * /opt/kiln/start-runner, the guest command kiln's GitHub runner VMs run (config: github.runnerCommand).
 *
 * Updates: `--disableupdate` is a `config.sh` option and a JIT runner never runs `config.sh`, so kiln pins
 * the runner version in the image instead; each VM is single-use, so a self-update cannot outlive its
 * job. GitHub stops sending jobs to runners more than 30 days behind a release: rebuild the image.
 */
import { createHash } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { chmodSync, createReadStream, createWriteStream, existsSync, mkdirSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { KilnError } from '../core/errors.ts';

export const RUNNER_DIR = '/opt/actions-runner';
export const START_RUNNER = '/opt/kiln/start-runner';

/**
 * The guest command. The JIT config arrives in KILN_RUNNER_JITCONFIG; it is removed from the environment
 * before the runner starts, so job steps never inherit the credential. The VM ends when the runner exits.
 */
export const START_RUNNER_SCRIPT = `#!/bin/sh
# kiln: start the GitHub Actions runner with its single-use JIT config (see src/image/actions-runner.ts).
set -eu
if [ -z "\${KILN_RUNNER_JITCONFIG:-}" ]; then
  echo "kiln start-runner: KILN_RUNNER_JITCONFIG is not set" >&2
  exit 2
fi
cfg=$KILN_RUNNER_JITCONFIG
unset KILN_RUNNER_JITCONFIG
cd "\${KILN_RUNNER_DIR:-${RUNNER_DIR}}"
export RUNNER_ALLOW_RUNASROOT=1
exec ./run.sh --jitconfig "$cfg"
`;

async function sha256Of(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const c of createReadStream(path)) h.update(c as Buffer);
  return h.digest('hex');
}

/** The tarball as a local file whose SHA-256 matches: a path is checked, a URL downloaded to `cacheDir`. */
export async function fetchRunnerTarball(o: { source: string; sha256: string; cacheDir: string; progress?: (line: string) => void }): Promise<string> {
  const want = o.sha256.toLowerCase();
  if (!/^[0-9a-f]{64}$/.test(want)) throw new KilnError('input.bad_checksum', `"${o.sha256}" is not a SHA-256 (64 hex digits)`, { hint: 'copy the checksum from the runner release notes' });
  let path = o.source;
  if (/^https?:\/\//.test(o.source)) {
    mkdirSync(o.cacheDir, { recursive: true });
    path = join(o.cacheDir, `actions-runner-${want}.tar.gz`);
    if (!existsSync(path)) {
      o.progress?.(`downloading ${o.source}`);
      const res = await fetch(o.source).catch((e: unknown) => {
        throw new KilnError('image.download_failed', `could not download ${o.source}: ${(e as Error).message}`, { kind: 'unavailable' });
      });
      if (!res.ok || !res.body) throw new KilnError('image.download_failed', `downloading ${o.source} answered ${res.status}`, { kind: 'unavailable' });
      const part = `${path}.part`;
      await pipeline(Readable.fromWeb(res.body as import('node:stream/web').ReadableStream), createWriteStream(part));
      const got = await sha256Of(part);
      if (got !== want) {
        rmSync(part, { force: true });
        throw new KilnError('image.checksum_mismatch', `${o.source} has SHA-256 ${got}, not ${want}`, { hint: 'check the URL and the checksum from the runner release notes' });
      }
      renameSync(part, path);
      o.progress?.(`downloaded ${(statSync(path).size / 1024 / 1024).toFixed(1)} MiB, SHA-256 matches; cached in ${o.cacheDir}`);
    } else {
      o.progress?.(`using the runner tarball cached in ${o.cacheDir}`);
    }
  } else if (!existsSync(path)) {
    throw new KilnError('image.not_found', `the runner tarball ${path} does not exist`, { hint: 'pass the path or https URL of actions-runner-linux-<arch>-<version>.tar.gz' });
  }
  const got = await sha256Of(path);
  if (got !== want) throw new KilnError('image.checksum_mismatch', `${path} has SHA-256 ${got}, not ${want}`, { hint: 'check the file and the checksum from the runner release notes' });
  return path;
}

/** Unpacks the verified runner into `<rootDir>/opt/actions-runner` and writes the start script. */
export async function installActionsRunner(o: { rootDir: string; source: string; sha256: string; cacheDir: string }): Promise<{ runnerDir: string; startScript: string }> {
  const tarball = await fetchRunnerTarball(o);
  const runnerDir = join(o.rootDir, RUNNER_DIR);
  rmSync(runnerDir, { recursive: true, force: true });
  mkdirSync(runnerDir, { recursive: true });
  const r = spawnSync('tar', ['-xzf', tarball, '-C', runnerDir, '--no-same-owner'], { encoding: 'utf8' });
  if (r.status !== 0) throw new KilnError('image.bad_tarball', `could not unpack ${tarball}: ${r.stderr.trim()}`, { hint: 'is it the actions-runner-linux-*.tar.gz release file?' });
  if (!existsSync(join(runnerDir, 'run.sh'))) throw new KilnError('image.bad_tarball', `${o.source} has no run.sh at its top level`, { hint: 'use the actions-runner-linux-*.tar.gz release file' });
  const startScript = join(o.rootDir, START_RUNNER);
  mkdirSync(join(o.rootDir, '/opt/kiln'), { recursive: true });
  writeFileSync(startScript, START_RUNNER_SCRIPT);
  chmodSync(startScript, 0o755);
  return { runnerDir, startScript };
}
