/**
 * Damages a snapshot's saved device state the way bit rot would: bytes changed under an unchanged stat record
 * (the record is re-sealed with the new size, inode and times), so only QEMU notices, when it restores.
 */
import { chmodSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export function damageSnapshotState(dir: string): void {
  const state = join(dir, 'state');
  const bytes = readFileSync(state);
  bytes.fill(0x5a, 64, Math.min(bytes.length, 4096));
  chmodSync(state, 0o600);
  writeFileSync(state, bytes);
  chmodSync(state, 0o400);
  const meta = JSON.parse(readFileSync(join(dir, 'meta.json'), 'utf8')) as { files: Record<string, Record<string, number>> };
  const st = statSync(state);
  Object.assign(meta.files.state!, { size: st.size, ino: st.ino, mtimeMs: st.mtimeMs, ctimeMs: st.ctimeMs });
  chmodSync(join(dir, 'meta.json'), 0o600);
  writeFileSync(join(dir, 'meta.json'), JSON.stringify(meta));
}
