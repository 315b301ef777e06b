import { readdirSync, readFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';

/** QEMU processes started by kiln (their command line names a kiln VM directory). */
export function kilnQemuProcesses(): string[] {
  const found: string[] = [];
  for (const pid of readdirSync('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    let cmd = '';
    try {
      cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ');
    } catch {
      continue;
    }
    if (/qemu-system/.test(cmd) && /kiln-vm-/.test(cmd)) found.push(`process ${pid}: ${cmd}`);
  }
  return found;
}

export function kilnCgroups(): string[] {
  const found: string[] = [];
  for (const base of ['/sys/fs/cgroup', '/sys/fs/cgroup/cpu', '/sys/fs/cgroup/memory', '/sys/fs/cgroup/pids', '/sys/fs/cgroup/unified']) {
    const dir = join(base, 'kiln');
    if (!existsSync(dir)) continue;
    for (const e of readdirSync(dir, { withFileTypes: true })) if (e.isDirectory()) found.push(`cgroup ${join(dir, e.name)}`);
  }
  return found;
}

/** VM directories under the given data directories. */
export function vmDirs(dataDirs: string[]): string[] {
  const found: string[] = [];
  for (const d of dataDirs) {
    const vms = join(d, 'vms');
    if (!existsSync(vms)) continue;
    for (const e of readdirSync(vms)) found.push(`vm directory ${join(vms, e)}`);
  }
  return found;
}

export function findLeaks(dataDirs: string[] = []): string[] {
  return [...kilnQemuProcesses(), ...kilnCgroups(), ...vmDirs(dataDirs)];
}
