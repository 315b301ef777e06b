/**
 * Writes a secret file (the first admin token) owner-only without following a link placed at its path:
 * a new temporary file opened O_CREAT|O_EXCL|O_NOFOLLOW with mode 0600, renamed over the target (rename
 * replaces a link itself, never what it points at), so an existing 0644 file is replaced by a 0600 one.
 */
import { closeSync, constants, fsyncSync, openSync, renameSync, unlinkSync, writeSync } from 'node:fs';
import { randomBytes } from 'node:crypto';

export function writePrivateFile(path: string, text: string): void {
  const tmp = `${path}.${randomBytes(4).toString('hex')}.tmp`;
  const fd = openSync(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
  try {
    writeSync(fd, text);
    fsyncSync(fd);
  } catch (e) {
    closeSync(fd);
    unlinkSync(tmp);
    throw e;
  }
  closeSync(fd);
  renameSync(tmp, path);
}
