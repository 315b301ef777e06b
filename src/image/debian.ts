/** Fetching Debian packages for a guest architecture with the host's apt (no network code of our own). */
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import type { Arch } from '../core/arch.ts';
import { KilnError } from '../core/errors.ts';

export interface CommandResult {
  code: number;
  stdout: string;
  stderr: string;
}

export function runCommand(
  cmd: string,
  args: string[],
  opts: { cwd?: string; onLine?: (line: string) => void; env?: NodeJS.ProcessEnv } = {},
): Promise<CommandResult> {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, {
      cwd: opts.cwd,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, LC_ALL: 'C', DEBIAN_FRONTEND: 'noninteractive', ...opts.env },
    });
    let stdout = '';
    let stderr = '';
    // Progress lines come from both streams (debootstrap reports on stderr); each keeps its own partial line.
    const lines = () => {
      let partial = '';
      return (d: string) => {
        if (!opts.onLine) return;
        const ls = (partial + d).split(/\r?\n|\r/);
        partial = ls.pop() ?? '';
        for (const l of ls) if (l.trim()) opts.onLine(l.trim());
      };
    };
    const outLines = lines();
    const errLines = lines();
    p.stdout.setEncoding('utf8').on('data', (d: string) => {
      stdout += d;
      outLines(d);
    });
    p.stderr.setEncoding('utf8').on('data', (d: string) => {
      if (stderr.length < 1_000_000) stderr += d;
      errLines(d);
    });
    p.on('error', (e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') {
        reject(new KilnError('host.missing_command', `\`${cmd}\` is not installed`, { hint: 'run `kiln setup` to install what kiln needs' }));
      } else reject(e);
    });
    p.on('close', (code) => resolve({ code: code ?? 1, stdout, stderr }));
  });
}

/** The concrete kernel package behind Debian's `linux-image-cloud-<arch>` metapackage. */
export async function resolveKernelPackage(arch: Arch): Promise<string> {
  const meta = `linux-image-cloud-${arch}:${arch}`;
  const r = await runCommand('apt-cache', ['depends', meta]);
  const m = /Depends:\s*(linux-image-[^\s:]+)/.exec(r.stdout);
  if (r.code !== 0 || !m?.[1]) {
    throw new KilnError('image.no_kernel_package', `apt does not know the ${arch} cloud kernel (${meta})`, {
      hint:
        arch === 'amd64'
          ? 'run `apt-get update` (or `kiln setup`) so apt has package lists'
          : `run \`kiln setup\` (it runs \`dpkg --add-architecture ${arch}\` and \`apt-get update\`)`,
    });
  }
  return m[1];
}

/**
 * Downloads `pkg` for `arch` into `cacheDir` unless a .deb for it is already there; returns its path.
 * `apt-get download` checks the archive's signatures and hashes for us.
 */
export async function downloadDeb(pkg: string, arch: Arch, cacheDir: string, progress: (line: string) => void): Promise<string> {
  mkdirSync(cacheDir, { recursive: true });
  const existing = () => readdirSync(cacheDir).find((f) => f.startsWith(`${pkg}_`) && f.endsWith(`_${arch}.deb`));
  const have = existing();
  if (have) return join(cacheDir, have);
  progress(`downloading ${pkg} (${arch})`);
  const args = ['download', `${pkg}:${arch}`];
  if (process.getuid?.() === 0) args.unshift('-o', 'APT::Sandbox::User=root');
  const r = await runCommand('apt-get', args, { cwd: cacheDir, onLine: (l) => progress(`apt: ${l}`) });
  const got = existing();
  if (r.code !== 0 || !got || !existsSync(join(cacheDir, got))) {
    throw new KilnError('image.download_failed', `could not download ${pkg} for ${arch}: ${r.stderr.trim().split('\n').pop() ?? 'apt-get failed'}`, {
      hint: `check that \`apt-get download ${pkg}:${arch}\` works on this host (\`kiln setup\` enables ${arch} packages)`,
    });
  }
  return join(cacheDir, got);
}

export async function debVersion(deb: string): Promise<string> {
  const r = await runCommand('dpkg-deb', ['-f', deb, 'Version']);
  return r.stdout.trim();
}

export async function extractDeb(deb: string, into: string): Promise<void> {
  mkdirSync(into, { recursive: true });
  const r = await runCommand('dpkg-deb', ['-x', deb, into]);
  if (r.code !== 0) throw new KilnError('image.extract_failed', `could not unpack ${deb}: ${r.stderr.trim()}`, { hint: 'delete the file and run the build again' });
}

/** A kernel package unpacked into `<dir>`: its image file, version and module tree. */
export interface UnpackedKernel {
  vmlinuzPath: string;
  kernelVersion: string;
  modRoot: string;
}

export async function unpackKernel(deb: string, pkg: string, dir: string, progress: (line: string) => void): Promise<UnpackedKernel> {
  progress(`unpacking ${pkg}`);
  await extractDeb(deb, dir);
  const boot = join(dir, 'boot');
  const vmlinuz = readdirSync(boot).find((f) => f.startsWith('vmlinuz-'));
  if (!vmlinuz) throw new KilnError('image.bad_kernel_package', `${pkg} has no /boot/vmlinuz-*`, { hint: 'check the Debian archive this host uses' });
  const kernelVersion = vmlinuz.slice('vmlinuz-'.length);
  return { vmlinuzPath: join(boot, vmlinuz), kernelVersion, modRoot: join(dir, 'lib', 'modules', kernelVersion) };
}
