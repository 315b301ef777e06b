/** `kiln snapshots ls|rm|verify`: the warm-start snapshots of this machine's data directory. */
import type { Command } from 'commander';
import { KilnError } from '../core/errors.ts';
import { formatSize } from '../core/sizes.ts';
import { makeSnapshotStore } from '../vm/snapshot-store.ts';
import { loadCommonConfig } from './config.ts';
import { table, type Output } from './output.ts';

export function registerSnapshots(program: Command, out: () => Output): void {
  const cmd = program.command('snapshots').description('warm-start snapshots: booted images saved in memory, restored per job');
  cmd
    .command('ls')
    .description('list snapshots (most recently used first)')
    .option('--json', 'print JSON')
    .option('--data-dir <dir>', 'kiln data directory (env KILN_DATA_DIR)')
    .action((o: { json?: boolean; dataDir?: string }) => {
      const list = makeSnapshotStore(loadCommonConfig(o).dataDir).list();
      if (o.json) return out().data(JSON.stringify(list, null, 2));
      const rows = [['ID', 'IMAGE', 'ARCH', 'CPUS', 'MEMORY', 'DISK', 'CACHE', 'ACCEL', 'SIZE', 'LAST USED']];
      for (const s of list) {
        rows.push([
          s.id.slice(0, 12),
          s.key.image.slice(7, 19),
          s.key.arch,
          String(s.key.cpus),
          formatSize(s.key.memoryBytes),
          formatSize(s.key.diskBytes),
          // The cache slot's size (VMs with a cache disk of that size restore from it), or none.
          s.key.cacheBytes !== undefined ? formatSize(s.key.cacheBytes) : '-',
          s.key.accel,
          formatSize(s.bytes),
          new Date(s.lastUsedMs).toISOString().replace(/\.\d+Z$/, 'Z'),
        ]);
      }
      out().data(table(rows));
    });
  cmd
    .command('rm')
    .description('remove snapshots (the next job of their image and shape rebuilds one)')
    .argument('[id...]', 'snapshot ids (prefixes)')
    .option('--all', 'remove every snapshot')
    .option('--data-dir <dir>', 'kiln data directory (env KILN_DATA_DIR)')
    .action((ids: string[], o: { all?: boolean; dataDir?: string }) => {
      const store = makeSnapshotStore(loadCommonConfig(o).dataDir);
      const targets = o.all ? store.list().map((s) => s.id) : ids;
      if (targets.length === 0) throw new KilnError('input.no_snapshot', 'no snapshot named', { hint: 'give ids from `kiln snapshots ls`, or --all' });
      for (const id of targets) {
        if (!/^[0-9a-f]{4,24}$/.test(id) || !store.remove(id)) throw new KilnError('snapshot.not_found', `no snapshot "${id}"`, { hint: 'see `kiln snapshots ls` for ids' });
        out().data(`removed ${id.slice(0, 12)}`);
      }
    });
  cmd
    .command('verify')
    .description('hash every snapshot file again; damaged snapshots are removed (also part of `kiln image verify`)')
    .option('--data-dir <dir>', 'kiln data directory (env KILN_DATA_DIR)')
    .action(async (o: { dataDir?: string }) => {
      const r = await makeSnapshotStore(loadCommonConfig(o).dataDir).verifyAll();
      for (const id of r.ok) out().data(`ok ${id.slice(0, 12)}`);
      for (const x of r.removed) out().warn(`snapshot ${x.id.slice(0, 12)} was damaged (${x.why}): removed; the next job rebuilds it`);
    });
}
