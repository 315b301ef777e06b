/**
 * Verify once, not per run: a file's sha256 is computed once and recorded with what `stat` says about
 * the file (size, inode, mtime, ctime) in a `.sealed.json` beside it. Later checks compare only `stat`:
 * any write, replacement, rename over it or chmod changes at least one of these (ctime cannot be set
 * back from user space), so a changed file is hashed again and must still match.
 */
import { readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { sha256File } from './files.ts';

interface Seal {
  sha256: string;
  size: number;
  ino: number;
  mtimeMs: number;
  ctimeMs: number;
}

const sealFile = (path: string) => join(dirname(path), '.sealed.json');

function readSeals(path: string): Record<string, Seal> {
  try {
    return JSON.parse(readFileSync(sealFile(path), 'utf8')) as Record<string, Seal>;
  } catch {
    return {};
  }
}

const stamp = (path: string) => {
  const st = statSync(path);
  return { size: st.size, ino: st.ino, mtimeMs: st.mtimeMs, ctimeMs: st.ctimeMs };
};

/** Records `sha256` for `path` as it is now (the caller has just hashed or written it). */
export function seal(path: string, sha256: string): void {
  const seals = readSeals(path);
  seals[basename(path)] = { sha256, ...stamp(path) };
  const tmp = `${sealFile(path)}.${process.pid}.tmp`;
  try {
    writeFileSync(tmp, JSON.stringify(seals));
    renameSync(tmp, sealFile(path));
  } catch {
    /* a read-only image directory: checks fall back to hashing */
  }
}

/**
 * True if `path` has content `sha256`: from its seal when `stat` still matches, else by hashing it
 * (and sealing it if it matches). Throws if the file cannot be read.
 */
export async function checkSealed(path: string, sha256: string, opts: { rehash?: boolean } = {}): Promise<boolean> {
  const now = stamp(path);
  const s = readSeals(path)[basename(path)];
  if (!opts.rehash && s && s.sha256 === sha256 && s.size === now.size && s.ino === now.ino && s.mtimeMs === now.mtimeMs && s.ctimeMs === now.ctimeMs) return true;
  const got = await sha256File(path);
  if (got !== sha256) return false;
  seal(path, sha256);
  return true;
}
