import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after } from 'node:test';
import type { GuestImageRef } from '../../src/vm/driver.ts';
import { makeMemoryDriver } from '../../src/vm/memory-driver.ts';
import { runVmDriverConformance, type ConformanceCommands } from '../support/vm-conformance.ts';

/** The memory driver's command language (see src/vm/memory-driver.ts) for the conformance intents. */
const q = (s: string) => `'${s}'`;
const memoryCommands: ConformanceCommands = {
  exit: (code) => ['sh', '-c', `exit ${code}`],
  write: (out, err, code) => {
    const lines = (text: string, redirect: string) =>
      text.split('\n').map((part, i, all) => (i < all.length - 1 ? `echo ${q(part)}${redirect}` : part ? `echo -n ${q(part)}${redirect}` : '')).filter(Boolean);
    return ['sh', '-c', [...lines(out, ''), ...lines(err, ' >&2'), `exit ${code}`].join('; ')];
  },
  echoEnvAndArgs: (names, args) => ['sh', '-c', `printenv ${names.join(' ')}; printargs`, 'sh', ...args],
  sleep: (s) => ['sleep', String(s)],
};

// The memory driver checks image files against their digests too: give it real (tiny) files.
const dir = mkdtempSync(join(tmpdir(), 'kiln-memconf-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const file = (name: string, content: string) => {
  writeFileSync(join(dir, name), content);
  return { path: join(dir, name), sha: createHash('sha256').update(content).digest('hex') };
};
const kernel = file('vmlinuz', 'not really a kernel');
const initrd = file('initrd', 'not really an initramfs');
const image: GuestImageRef = { digest: `sha256:${'1'.repeat(64)}`, arch: 'amd64', kernelPath: kernel.path, initrdPath: initrd.path, kernelSha256: kernel.sha, initrdSha256: initrd.sha };

runVmDriverConformance({
  name: 'memory',
  arch: 'amd64',
  driver: () => makeMemoryDriver({ bootMs: 20 }),
  image: () => image,
  corruptImage: () => ({ ...image, initrdSha256: 'f'.repeat(64) }),
  commands: memoryCommands,
  assertClean: () => undefined,
  jobTimeoutMs: 5_000,
});
