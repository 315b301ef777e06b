/**
 * QEMU VM lifecycle, step 5 (tear down): once QEMU is gone, close the VM's sockets and remove its cgroup
 * and directory. Also undoes a preparation that failed half-way.
 */
import { rmSync } from 'node:fs';
import type { Logger } from 'pino';
import { removeCgroupDirs } from './cgroups.ts';
import { removeEgress } from './egress.ts';
import { delay } from './process.ts';
import type { VmHostResources } from './qemu-prepare.ts';

export async function teardownVm(host: VmHostResources, log: Logger | undefined): Promise<void> {
  for (const s of host.servers) s.close();
  if (host.egressName) removeEgress(host.egressName);
  if (host.cgroup) {
    const left = await removeCgroupsPatiently(host.cgroup.dirs);
    if (left.length > 0) log?.warn({ left }, 'cgroups could not be removed; the next sweep will retry');
  }
  rmSync(host.vmDir, { recursive: true, force: true });
}

/** Removes cgroup directories, retrying for up to half a second while the kernel lets go of their last processes. */
export async function removeCgroupsPatiently(dirs: string[]): Promise<string[]> {
  let left = removeCgroupDirs(dirs);
  for (let i = 0; left.length > 0 && i < 50; i++) {
    await delay(10);
    left = removeCgroupDirs(left);
  }
  return left;
}
