/**
 * kiln's data directory is owner-only (docs/security.md, "Files"): the embedded database (PGlite's files
 * and WAL hold job secrets and GitHub JIT configs), the admin token, host credentials, VM directories.
 * Every command that owns a data directory calls `makePrivateDataDir` before opening anything in it: the
 * process's umask becomes 077 (so PGlite's files, which it creates 0666, come out 0600, and directories
 * 0700), and what an older kiln left there is tightened (symbolic links are left alone, never followed).
 */
import { chmodSync, lstatSync, mkdirSync, readdirSync } from 'node:fs';
import { join } from 'node:path';

export function makePrivateDataDir(dir: string): void {
  process.umask(0o077);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  tighten(dir);
}

/**
 * Tightens what is in the data directory again. PGlite sets its files' modes itself (0666, through its
 * file system layer, whatever the umask), so commands call this after opening the embedded store; files it
 * makes later stay readable by mode, but inside directories only the owner may enter (0700).
 */
export function tighten(path: string): void {
  let st;
  try {
    st = lstatSync(path);
  } catch {
    return; // gone meanwhile
  }
  if (st.isSymbolicLink()) return;
  try {
    if (st.isDirectory()) {
      if ((st.mode & 0o077) !== 0) chmodSync(path, st.mode & 0o700);
      for (const name of readdirSync(path)) tighten(join(path, name));
    } else if (st.isFile() && (st.mode & 0o077) !== 0) {
      chmodSync(path, st.mode & 0o700);
    }
  } catch (e) {
    // Removed meanwhile (a VM directory being cleaned up), or not ours to change: leave it.
    const code = (e as NodeJS.ErrnoException).code;
    if (code !== 'ENOENT' && code !== 'EPERM' && code !== 'EACCES') throw e;
  }
}
