/**
 * `kiln caches ls|rm|inspect`: the warm cache disks (docs/caches.md) of this machine's data directory (on a
 * fleet host: the agent's, with --data-dir). `kiln caches ls --fleet` lists every host's caches as their
 * agents last reported them (GET /v1/hosts); rm and inspect are per host.
 */
import type { Command } from 'commander';
import { KilnError } from '../core/errors.ts';
import type { HostCacheMsg } from '../core/agent-protocol.ts';
import { formatSize } from '../core/sizes.ts';
import { makeCacheStore, validateCacheKey, type CacheInfo, type CacheVersion } from '../vm/cache-store.ts';
import { loadCommonConfig } from './config.ts';
import { table, type Output } from './output.ts';

const when = (iso: string) => iso.replace(/\.\d+Z$/, 'Z');
const writer = (v: CacheVersion | undefined) => (v ? [v.jobId ? `job ${v.jobId}` : '', v.ref ?? '', v.commit ? v.commit.slice(0, 12) : '', v.by ?? ''].filter(Boolean).join(' ') : '-');

export function registerCaches(program: Command, out: () => Output): void {
  const cmd = program.command('caches').description('warm cache disks: per-key ext4 disks mounted at /cache, saved by trusted jobs');
  cmd
    .command('ls')
    .description('list caches (most recently used first)')
    .option('--json', 'print JSON')
    .option('--fleet', 'every host\'s caches, through the control plane (KILN_SERVER / --server)')
    .option('--server <url>', 'kiln server URL, with --fleet (env KILN_SERVER)')
    .option('--token <token>', 'API token, with --fleet (env KILN_TOKEN)')
    .option('--data-dir <dir>', 'kiln data directory (env KILN_DATA_DIR)')
    .action(async (o: { json?: boolean; dataDir?: string; fleet?: boolean; server?: string; token?: string }) => {
      if (o.fleet) return fleetList(o, out());
      const list = makeCacheStore(loadCommonConfig(o).dataDir).list().sort((a, b) => b.lastUsedAt.localeCompare(a.lastUsedAt));
      if (o.json) return out().data(JSON.stringify(list, null, 2));
      const rows = [['KEY', 'VERSIONS', 'SIZE', 'ON DISK', 'WRITER', 'LAST USED', 'IN USE']];
      for (const c of list) rows.push([c.key, String(c.versions.length), formatSize(c.sizeBytes), formatSize(c.bytes), writer(c.current), when(c.lastUsedAt), String(c.inUse)]);
      out().data(table(rows));
    });
  cmd
    .command('inspect')
    .description('a cache\'s versions: who wrote each (job, ref, commit), when, and its size')
    .argument('<key>', 'the cache key')
    .option('--json', 'print JSON')
    .option('--data-dir <dir>', 'kiln data directory (env KILN_DATA_DIR)')
    .action((key: string, o: { json?: boolean; dataDir?: string }) => {
      validateCacheKey(key);
      const c: CacheInfo | undefined = makeCacheStore(loadCommonConfig(o).dataDir).inspect(key);
      if (!c) throw new KilnError('cache.not_found', `no cache "${key}" on this host`, { hint: 'see `kiln caches ls`' });
      if (o.json) return out().data(JSON.stringify(c, null, 2));
      out().data(`key        ${c.key}\nsize       ${formatSize(c.sizeBytes)} (file system), ${formatSize(c.bytes)} on disk\nlast used  ${when(c.lastUsedAt)}\nin use     ${c.inUse}\ncurrent    ${c.current?.id ?? '- (empty)'}`);
      const rows = [['VERSION', 'CREATED', 'ON DISK', 'JOB', 'REF', 'COMMIT', 'BY', 'COMMIT TIME', 'FROM', 'SHA256']];
      for (const v of c.versions) {
        rows.push([
          `${v.id}${v.id === c.current?.id ? ' *' : ''}`,
          when(v.createdAt),
          formatSize(v.bytes),
          v.jobId ?? '-',
          v.ref ?? '-',
          v.commit?.slice(0, 12) ?? '-',
          v.by ?? '-',
          v.commitSeconds !== undefined ? `${v.commitSeconds.toFixed(2)} s` : '-',
          // A version fetched from a peer host names it; one committed here says so.
          v.fetchedFrom ?? 'here',
          v.sha256?.slice(0, 12) ?? '-',
        ]);
      }
      out().data(table(rows));
    });
  cmd
    .command('rm')
    .description('remove caches (jobs using one keep their copy until they end; the next job starts empty)')
    .argument('[key...]', 'cache keys')
    .option('--all', 'remove every cache')
    .option('--data-dir <dir>', 'kiln data directory (env KILN_DATA_DIR)')
    .action((keys: string[], o: { all?: boolean; dataDir?: string }) => {
      const store = makeCacheStore(loadCommonConfig(o).dataDir);
      const targets = o.all ? store.list().map((c) => c.key) : keys;
      if (targets.length === 0) throw new KilnError('input.no_cache', 'no cache named', { hint: 'give keys from `kiln caches ls`, or --all' });
      for (const k of targets) {
        if (!store.remove(k)) throw new KilnError('cache.not_found', `no cache "${k}" on this host`, { hint: 'see `kiln caches ls`' });
        out().data(`removed ${k}`);
      }
    });
}

/** Every host's caches by key: which hosts hold it, the newest version among them, its writer, last use. */
async function fleetList(o: { json?: boolean; dataDir?: string; server?: string; token?: string }, out: Output): Promise<void> {
  const { clientFrom } = await import('./fleet-client.ts');
  const { API } = await import('../core/http-contract.ts');
  const client = clientFrom(o);
  // Every host: the listing comes in pages (`next`).
  const hosts: { name: string; caches?: HostCacheMsg[] }[] = [];
  for (let after: string | undefined; ; ) {
    const page = await client.call(API.listHosts, { query: after !== undefined ? { after } : {} });
    hosts.push(...page.hosts);
    if (page.next === null) break;
    after = page.next;
  }
  const byKey = new Map<string, { key: string; hosts: string[]; version?: string; bytes: number; sizeBytes: number; lastUsedAt: string; writer?: string }>();
  for (const h of hosts) {
    for (const c of h.caches ?? []) {
      const e = byKey.get(c.key) ?? { key: c.key, hosts: [], bytes: 0, sizeBytes: c.sizeBytes, lastUsedAt: c.lastUsedAt };
      e.hosts.push(h.name);
      e.bytes += c.bytes;
      if (c.lastUsedAt >= e.lastUsedAt) {
        e.lastUsedAt = c.lastUsedAt;
        if (c.version) e.version = c.version;
        if (c.writer) e.writer = c.writer;
      }
      byKey.set(c.key, e);
    }
  }
  const list = [...byKey.values()].sort((a, b) => b.lastUsedAt.localeCompare(a.lastUsedAt));
  if (o.json) return out.data(JSON.stringify(list, null, 2));
  const rows = [['KEY', 'HOSTS', 'VERSION', 'SIZE', 'ON DISK', 'WRITER', 'LAST USED']];
  for (const c of list) rows.push([c.key, c.hosts.join(','), c.version ?? '-', formatSize(c.sizeBytes), formatSize(c.bytes), c.writer ?? '-', when(c.lastUsedAt)]);
  out.data(table(rows));
}
