/**
 * QEMU VM lifecycle, step 6 (sweep): at start-up, remove what dead kilns left behind: QEMU processes,
 * cgroups and VM directories. Never touches what a live kiln owns.
 */
import { existsSync, readdirSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { cgroupPids, listVmCgroups, removeCgroupDirs, type CgroupLayout } from './cgroups.ts';
import { readJson, readText } from './files.ts';
import { delay, isAlive, ownerAlive, processCmdline, type Owner } from './process.ts';
import { removeCgroupsPatiently } from './qemu-teardown.ts';
import { egressVmNames, removeEgress } from './egress.ts';

export interface SweepOptions {
  vmsDir: string;
  layout: CgroupLayout;
  /** The tag cgroup names of this data directory end with (`<vm id>.<tag>`). */
  dataTag: string;
  /** VMs this driver runs now: never swept. */
  isRunning: (id: string) => boolean;
  logger?: Logger | undefined;
}

export async function sweepVms(o: SweepOptions): Promise<{ removed: string[] }> {
  const removed: string[] = [];
  // Cgroups are host-wide; ours carry this data directory's tag. Others may belong to another kiln.
  const cgroups = new Map<string, string[]>();
  for (const [name, dirs] of listVmCgroups(o.layout)) {
    if (name.endsWith(`.${o.dataTag}`)) cgroups.set(name.slice(0, -o.dataTag.length - 1), dirs);
    else {
      // Not ours: never touch its processes; remove it only if empty and not freshly made (a launch in progress).
      removeCgroupDirs(dirs.filter((d) => cgroupPids(d).length === 0 && Date.now() - statSync(d).mtimeMs > 60_000));
    }
  }
  // Egress chains of this data directory's VMs (the nftables table is shared by every kiln on the host).
  const egress = egressVmNames();
  const chained = egress.names.filter((n) => n.endsWith(`.${o.dataTag}`)).map((n) => n.slice(0, -o.dataTag.length - 1));
  const ids = new Set<string>([...(existsSync(o.vmsDir) ? readdirSync(o.vmsDir) : []), ...cgroups.keys(), ...chained]);
  for (const id of ids) {
    if (o.isRunning(id)) continue;
    const dir = join(o.vmsDir, id);
    const owner = readJson<Owner>(join(dir, 'owner.json'));
    if (owner && ownerAlive(owner)) continue; // a live kiln (maybe another driver in this process) owns it
    if (!owner && existsSync(dir) && Date.now() - statSync(dir).mtimeMs < 60_000) continue; // being created right now
    const pids = new Set<number>((cgroups.get(id) ?? []).flatMap(cgroupPids));
    const pidFile = Number(readText(join(dir, 'qemu.pid')).trim());
    if (pidFile > 0) pids.add(pidFile);
    for (const pid of pids) {
      if (isAlive(pid) && processCmdline(pid).includes(`kiln-vm-${id}`)) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          /* already gone */
        }
        for (let i = 0; i < 200 && isAlive(pid); i++) await delay(10);
      }
    }
    await removeCgroupsPatiently(cgroups.get(id) ?? []);
    removeEgress(`${id}.${o.dataTag}`, egress.items);
    rmSync(dir, { recursive: true, force: true });
    removed.push(id);
    o.logger?.info({ vmId: id }, 'removed what an earlier kiln left behind');
  }
  return { removed };
}
