/**
 * The host side of kiln-init's line protocol on the kiln.ctl port (see src/image/guest/kiln-init).
 * Values travel base64-encoded so any bytes (spaces, quotes, newlines, unicode) arrive intact.
 */
import type { GuestJob } from './driver.ts';

export const GUEST_NET = { address: '10.0.2.15/24', gateway: '10.0.2.2' } as const;

export type GuestMessage =
  | { type: 'ready'; uptimeMs: number }
  | { type: 'step'; name: string }
  | { type: 'exit'; code: number }
  | { type: 'unknown'; line: string };

export function parseGuestLine(line: string): GuestMessage {
  const [word, arg = ''] = line.trim().split(/\s+/, 2);
  if (word === 'READY') {
    const s = Number(arg);
    return { type: 'ready', uptimeMs: Number.isFinite(s) ? Math.round(s * 1000) : NaN };
  }
  if (word === 'STEP') return { type: 'step', name: arg };
  if (word === 'EXIT' && /^\d+$/.test(arg)) return { type: 'exit', code: Number(arg) };
  return { type: 'unknown', line };
}

const b64 = (s: string) => Buffer.from(s, 'utf8').toString('base64');

/** Env names the guest accepts: what a POSIX shell could export. */
export function isValidEnvName(name: string): boolean {
  return /^[A-Za-z_][A-Za-z0-9_]*$/.test(name);
}

export function encodeJob(job: GuestJob, net: boolean): string {
  const lines: string[] = [];
  for (const [k, v] of Object.entries(job.env)) lines.push(`ENV ${b64(`${k}=${v}`)}`);
  for (const a of job.command) lines.push(`ARG ${b64(a)}`);
  if (job.cwd) lines.push(`CWD ${b64(job.cwd)}`);
  if (net) lines.push(`NET ${GUEST_NET.address} ${GUEST_NET.gateway}`);
  lines.push('RUN');
  return lines.map((l) => `${l}\n`).join('');
}

/** Splits a byte stream into lines, keeping the remainder between calls. */
export function makeLineSplitter(onLine: (line: string) => void): (chunk: Buffer) => void {
  let rest = '';
  return (chunk) => {
    const text = rest + chunk.toString('utf8');
    const lines = text.split('\n');
    rest = lines.pop() ?? '';
    for (const l of lines) onLine(l);
  };
}
