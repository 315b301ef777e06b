/**
 * The host credential on disk: owner-only (0600), written without following a link someone placed at the
 * path (O_NOFOLLOW), into a temporary file renamed over the old one.
 */
import { closeSync, constants, existsSync, fsyncSync, openSync, readFileSync, renameSync, writeSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { KilnError } from '../core/errors.ts';

export function readCredential(path: string): string | undefined {
  if (!existsSync(path)) return undefined;
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW);
  } catch (e) {
    throw new KilnError('agent.credential_unreadable', `cannot read the host credential ${path}: ${(e as Error).message}`, { hint: 'it must be a regular file owned by the agent’s user' });
  }
  try {
    const text = readFileSync(fd, 'utf8').trim();
    return text.length > 0 ? text : undefined;
  } finally {
    closeSync(fd);
  }
}

export function writeCredential(path: string, credential: string): void {
  const tmp = `${path}.${randomBytes(4).toString('hex')}.tmp`;
  const fd = openSync(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
  try {
    writeSync(fd, `${credential}\n`);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, path);
}
