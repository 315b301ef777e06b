/** `kiln hosts ls|drain|cordon|uncordon|rm`. */
import type { Command } from 'commander';
import type { Host, HostMirror } from '../core/host.ts';
import { formatSize } from '../core/sizes.ts';
import { addClientOptions, clientFrom, type ClientFlags } from './fleet-client.ts';
import { table, type Output } from './output.ts';

/** `healthy 12.3M`, `down (3 restarts)`, or `-` when the host runs no mirror. */
export function mirrorCell(m: HostMirror | null | undefined): string {
  if (!m) return '-';
  if (m.healthy) return `healthy ${formatSize(m.cacheBytes)}`;
  return `down (${m.restarts} restart${m.restarts === 1 ? '' : 's'})`;
}

type HostOut = Host & { jobs: number; used: { cpus: number; memoryBytes: number } };

export function registerHosts(program: Command, out: () => Output): void {
  const hosts = program.command('hosts').description('list and manage the hosts of a fleet');
  addClientOptions(hosts.command('ls').description('list hosts'))
    .option('--json', 'print JSON')
    .action(async (f: ClientFlags & { json?: boolean }) => {
      const { hosts: list } = await clientFrom(f).request<{ hosts: HostOut[] }>('GET', '/v1/hosts');
      if (f.json) return out().data(JSON.stringify(list, null, 2));
      out().data(
        table([
          ['ID', 'NAME', 'STATE', 'ARCH', 'ACCEL', 'CPUS', 'MEMORY', 'JOBS', 'MIRROR', 'LABELS'],
          ...list.map((h) => [
            String(h.id),
            h.name,
            h.state + (h.cordoned ? ',cordoned' : ''),
            h.arch,
            h.accel,
            `${h.used.cpus}/${h.capacity.cpus}`,
            `${formatSize(h.used.memoryBytes)}/${formatSize(h.capacity.memoryBytes)}`,
            String(h.jobs),
            mirrorCell(h.mirror),
            h.labels.join(',') || '-',
          ]),
        ]),
      );
    });
  const action = (verb: 'drain' | 'cordon' | 'uncordon', text: string) =>
    addClientOptions(hosts.command(`${verb} <host>`).description(text)).action(async (ref: string, f: ClientFlags) => {
      const h = await clientFrom(f).request<Host>('POST', `/v1/hosts/${encodeURIComponent(ref)}/${verb}`);
      out().info(`host ${h.name}: ${h.state}${h.cordoned ? ', cordoned' : ''}`);
    });
  action('drain', 'stop placing jobs on a host and let running ones finish (kept across reconnects)');
  action('cordon', 'stop placing jobs on a host; it stays online');
  action('uncordon', 'undo drain and cordon');
  addClientOptions(hosts.command('rm <host>').description('forget a host (refused while it runs jobs unless --force)'))
    .option('--force', 'remove even while it is connected; its agent is disconnected and stops')
    .action(async (ref: string, f: ClientFlags & { force?: boolean }) => {
      const r = await clientFrom(f).request<{ removed: string }>('DELETE', `/v1/hosts/${encodeURIComponent(ref)}${f.force ? '?force=true' : ''}`);
      out().info(`removed host ${r.removed}`);
    });
}
