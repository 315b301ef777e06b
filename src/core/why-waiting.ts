/**
 * Why a queued job is not placed yet, in words an operator can act on. Pure: the queue page and the API
 * pass the job, the fleet as the store has it and the tenant's limit. Checks go from the hardest fact
 * (no host of that architecture at all) to the most passing one (every fitting host is busy).
 */
import type { HostState } from './host-state.ts';
import type { Resources } from './host.ts';

export interface WaitingJob {
  tenant: string;
  arch: string;
  cpus: number;
  memoryBytes: number;
  diskBytes: number;
  hostLabels: readonly string[];
}

export interface FleetHost {
  name: string;
  state: HostState;
  cordoned: boolean;
  arch: string;
  labels: readonly string[];
  capacity: Resources;
  used: Resources;
}

export const WAIT_REASONS = ['no_host_arch', 'no_host_labels', 'too_big', 'hosts_unavailable', 'tenant_limit', 'fleet_busy', 'next_pass'] as const;
export type WaitReason = (typeof WAIT_REASONS)[number];

export interface Why {
  code: WaitReason;
  message: string;
}

const GiB = 1024 ** 3;
const fits = (job: WaitingJob, r: Resources) => job.cpus <= r.cpus && job.memoryBytes <= r.memoryBytes && job.diskBytes <= r.diskBytes;

export function whyWaiting(job: WaitingJob, hosts: readonly FleetHost[], tenant?: { active: number; limit: number | null }): Why {
  const ofArch = hosts.filter((h) => h.arch === job.arch);
  if (ofArch.length === 0) return { code: 'no_host_arch', message: `no host of architecture ${job.arch} has ever joined` };
  const labelled = ofArch.filter((h) => job.hostLabels.every((l) => h.labels.includes(l)));
  if (labelled.length === 0) return { code: 'no_host_labels', message: `no ${job.arch} host has the labels ${job.hostLabels.join(', ')}` };
  const bigEnough = labelled.filter((h) => fits(job, h.capacity));
  if (bigEnough.length === 0) {
    const big = labelled.reduce((a, h) => (h.capacity.cpus > a.capacity.cpus ? h : a));
    return {
      code: 'too_big',
      message: `asks ${job.cpus} CPUs, ${(job.memoryBytes / GiB).toFixed(1)} GiB: larger than any ${job.arch} host (largest ${big.name}: ${big.capacity.cpus} CPUs, ${(big.capacity.memoryBytes / GiB).toFixed(1)} GiB)`,
    };
  }
  const usable = bigEnough.filter((h) => h.state === 'online' && !h.cordoned);
  if (usable.length === 0) {
    const states = [...new Set(bigEnough.map((h) => (h.cordoned ? 'cordoned' : h.state)))].join(', ');
    return { code: 'hosts_unavailable', message: `every ${job.arch} host that could take it is ${states}` };
  }
  if (tenant && tenant.limit !== null && tenant.active >= tenant.limit) {
    return { code: 'tenant_limit', message: `tenant ${job.tenant} runs ${tenant.active} jobs, its limit is ${tenant.limit}` };
  }
  const free = usable.filter((h) =>
    fits(job, { cpus: h.capacity.cpus - h.used.cpus, memoryBytes: h.capacity.memoryBytes - h.used.memoryBytes, diskBytes: h.capacity.diskBytes - h.used.diskBytes }),
  );
  if (free.length === 0) return { code: 'fleet_busy', message: `all ${usable.length} ${job.arch} hosts that fit it are full; it waits for one to free up` };
  return { code: 'next_pass', message: `${free.length} host(s) have room; the next scheduling pass places it` };
}
