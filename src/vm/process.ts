/** Process bookkeeping shared by the driver and the sweep: owner records and liveness checks. */
import { readFileSync } from 'node:fs';

/** The kernel's start time of a process (clock ticks since boot), or undefined if it is gone. */
export function processStartTime(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return Number(fields[19]);
  } catch {
    return undefined;
  }
}

export function processCmdline(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ');
  } catch {
    return '';
  }
}

export interface Owner {
  pid: number;
  start: number;
}

export function currentOwner(): Owner {
  return { pid: process.pid, start: processStartTime(process.pid) ?? 0 };
}

export function ownerAlive(o: Owner): boolean {
  return processStartTime(o.pid) === o.start;
}

export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** A plain timer promise; `unref` lets the process exit while it is pending. */
export function delay(ms: number, unref = false): Promise<void> {
  return new Promise((r) => {
    const t = setTimeout(r, ms);
    if (unref) t.unref();
  });
}
