import { KilnError } from './errors.ts';

/** Architectures kiln runs guests for, in Debian / OCI spelling. */
export const ARCHES = ['amd64', 'arm64'] as const;
export type Arch = (typeof ARCHES)[number];

const ALIASES: Record<string, Arch> = {
  amd64: 'amd64',
  x86_64: 'amd64',
  x64: 'amd64',
  arm64: 'arm64',
  aarch64: 'arm64',
};

export function parseArch(text: string): Arch {
  const arch = ALIASES[text.trim().toLowerCase()];
  if (!arch) {
    throw new KilnError('input.unknown_arch', `unknown architecture "${text}"`, {
      hint: `use one of: ${ARCHES.join(', ')}`,
    });
  }
  return arch;
}

/** Maps Node's process.arch to kiln's spelling; undefined for hosts kiln does not run on. */
export function archFromNode(nodeArch: string): Arch | undefined {
  if (nodeArch === 'x64') return 'amd64';
  if (nodeArch === 'arm64') return 'arm64';
  return undefined;
}

/** What `uname -m` prints inside a guest of this architecture. */
export function unameMachine(arch: Arch): string {
  return arch === 'amd64' ? 'x86_64' : 'aarch64';
}
