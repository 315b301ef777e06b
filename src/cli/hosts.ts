/** `kiln hosts ls|drain|cordon|uncordon|wake|sleep|rm`. */
import type { Command } from 'commander';
import type { SnapshotStateMsg } from '../core/agent-protocol.ts';
import type { HostMirror } from '../core/host.ts';
import { API, type HostWithUsage } from '../core/http-contract.ts';
import { formatSize } from '../core/sizes.ts';
import { addClientOptions, clientFrom, type ClientFlags } from './fleet-client.ts';
import { table, type Output } from './output.ts';

/**
 * `healthy 12.3M`, `down (3 restarts)`, or `-` when the host runs no mirror; the host's mirrors of other
 * registries add `+2` (`+2, 1 down`). `--json` has them all.
 */
export function mirrorCell(m: HostMirror | null | undefined): string {
  if (!m) return '-';
  const others = m.others ?? [];
  const down = others.filter((o) => !o.healthy).length;
  const more = others.length > 0 ? ` +${others.length}${down > 0 ? `, ${down} down` : ''}` : '';
  if (m.healthy) return `healthy ${formatSize(m.cacheBytes)}${more}`;
  return `down (${m.restarts} restart${m.restarts === 1 ? '' : 's'})${more}`;
}

/** The WARM column: `2 ready, 1 building`, or `-` when the host keeps no snapshots (or another replica holds its agent). */
export function snapshotCell(list: readonly SnapshotStateMsg[] | null | undefined): string {
  if (!list || list.length === 0) return '-';
  const n = (st: SnapshotStateMsg['state']) => list.filter((x) => x.state === st).length;
  return (['ready', 'building', 'failed'] as const).filter((st) => n(st) > 0).map((st) => `${n(st)} ${st}`).join(', ');
}

/** `3s`, `12m`, `5h`, `2d`: how long since `iso`, for the STATE column. */
export function sinceCell(iso: string | undefined, nowMs = Date.now()): string {
  if (!iso) return '';
  const s = Math.max(0, Math.floor((nowMs - Date.parse(iso)) / 1000));
  if (s < 120) return `${s}s`;
  if (s < 2 * 3600) return `${Math.floor(s / 60)}m`;
  if (s < 2 * 86400) return `${Math.floor(s / 3600)}h`;
  return `${Math.floor(s / 86400)}d`;
}

/** The STATE column: state, flags, and since when for the power states (asleep 2h, waking 40s). */
export function stateCell(h: Pick<HostWithUsage, 'state' | 'cordoned' | 'stateSince' | 'wakeMarkedUntil'>, nowMs = Date.now()): string {
  let s = h.state + (h.cordoned ? ',cordoned' : '');
  if (h.wakeMarkedUntil && Date.parse(h.wakeMarkedUntil) > nowMs) s += ',wake-failed';
  return h.stateSince ? `${s} ${sinceCell(h.stateSince, nowMs)}` : s;
}

export function registerHosts(program: Command, out: () => Output): void {
  const hosts = program.command('hosts').description('list and manage the hosts of a fleet');
  addClientOptions(hosts.command('ls').description('list hosts'))
    .option('--json', 'print JSON')
    .action(async (f: ClientFlags & { json?: boolean }) => {
      const { hosts: list } = await clientFrom(f).call(API.listHosts, {});
      if (f.json) return out().data(JSON.stringify(list, null, 2));
      out().data(
        table([
          ['ID', 'NAME', 'STATE', 'ARCH', 'ACCEL', 'CPUS', 'MEMORY', 'JOBS', 'MIRROR', 'WARM', 'POWER', 'LABELS'],
          ...list.map((h) => [
            String(h.id),
            h.name,
            stateCell(h),
            h.arch,
            h.accel,
            `${h.used.cpus}/${h.capacity.cpus}`,
            `${formatSize(h.used.memoryBytes)}/${formatSize(h.capacity.memoryBytes)}`,
            String(h.jobs),
            mirrorCell(h.mirror),
            snapshotCell(h.snapshots),
            (h.power?.driver ?? 'none') + (h.power?.lastError ? ' (error)' : ''),
            h.labels.join(',') || '-',
          ]),
        ]),
      );
      for (const h of list) {
        const e = h.power?.lastError;
        if (e) out().info(`${h.name}: last ${e.action} failed at ${e.at}: ${e.message}`);
        for (const x of h.snapshots ?? []) {
          if (x.state === 'failed') out().info(`${h.name}: snapshot of ${x.image} (${x.cpus} cpu, ${formatSize(x.memoryBytes)}) failed: ${x.error ?? 'unknown error'}`);
        }
      }
    });
  const action = (verb: 'drain' | 'cordon' | 'uncordon', text: string) =>
    addClientOptions(hosts.command(`${verb} <host>`).description(text)).action(async (ref: string, f: ClientFlags) => {
      const h = await clientFrom(f).call({ drain: API.drainHost, cordon: API.cordonHost, uncordon: API.uncordonHost }[verb], { params: { ref } });
      out().info(`host ${h.name}: ${h.state}${h.cordoned ? ', cordoned' : ''}`);
    });
  action('drain', 'stop placing jobs on a host and let running ones finish (kept across reconnects)');
  action('cordon', 'stop placing jobs on a host; it stays online');
  action('uncordon', 'undo drain and cordon');
  addClientOptions(hosts.command('wake <host>').description('wake an asleep host (also one the power manager gave up on); see docs/power.md')).action(async (ref: string, f: ClientFlags) => {
    const r = await clientFrom(f).call(API.wakeHost, { params: { ref } });
    out().info(`host ${r.host}: waking (kiln hosts ls shows when it is online)`);
  });
  addClientOptions(hosts.command('sleep <host>').description('put a host to sleep: it drains, then runs its sleep command')).action(async (ref: string, f: ClientFlags) => {
    const r = await clientFrom(f).call(API.sleepHost, { params: { ref } });
    out().info(`host ${r.host}: draining, then going to sleep`);
  });
  addClientOptions(hosts.command('rm <host>').description('forget a host (refused while it runs jobs unless --force)'))
    .option('--force', 'remove even while it is connected; its agent is disconnected and stops')
    .action(async (ref: string, f: ClientFlags & { force?: boolean }) => {
      const r = await clientFrom(f).call(API.removeHost, { params: { ref }, query: f.force ? { force: true } : {} });
      out().info(`removed host ${r.removed}`);
    });
}
