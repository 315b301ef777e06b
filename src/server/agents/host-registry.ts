/**
 * The hosts connected to this replica: one link per agent WebSocket, with the capacity ledger the
 * scheduler places against. A host is connected to one replica at a time; only that replica places jobs
 * on it (the store checks ownership under a row lock, so a stale link can never over-commit a host).
 * HostRegistry is the scheduler's HostPool (scheduler/host-pool.ts): server.ts hands it to the scheduler.
 */
import type { Arch } from '../../core/arch.ts';
import type { HostImageMsg, ServerMessage, SnapshotStateMsg } from '../../core/agent-protocol.ts';
import type { Resources } from '../../core/host.ts';
import type { HostSlot } from '../scheduler/placement.ts';

export interface ActiveJob {
  attempt: number;
  cpus: number;
  memoryBytes: number;
  diskBytes: number;
}

/** The jobs on a host, keeping the sum of their resources as they come and go (the scheduler reads it every pass). */
export class ActiveJobs extends Map<number, ActiveJob> {
  readonly used: Resources = { cpus: 0, memoryBytes: 0, diskBytes: 0 };

  override set(id: number, j: ActiveJob): this {
    this.take(super.get(id), -1);
    super.set(id, j);
    this.take(j, 1);
    return this;
  }

  override delete(id: number): boolean {
    const j = super.get(id);
    this.take(j, -1);
    return super.delete(id);
  }

  override clear(): void {
    super.clear();
    this.used.cpus = 0;
    this.used.memoryBytes = 0;
    this.used.diskBytes = 0;
  }

  private take(j: ActiveJob | undefined, sign: 1 | -1): void {
    if (!j) return;
    this.used.cpus += sign * j.cpus;
    this.used.memoryBytes += sign * j.memoryBytes;
    this.used.diskBytes += sign * j.diskBytes;
  }
}

export interface HostLink {
  readonly hostId: number;
  readonly name: string;
  readonly arch: Arch;
  readonly labels: string[];
  readonly capacity: Resources;
  /** Jobs this replica believes occupy the host (placed, booting or running), by job id. */
  readonly active: ActiveJobs;
  /** Jobs a stop was sent for and not yet confirmed. */
  readonly stopping: Set<number>;
  schedulable: boolean;
  ready: boolean;
  /**
   * The host's warm-start snapshots as its agent last reported them (hello, host.status). Live state of the
   * connection, held by the replica the agent is connected to (not stored: see docs/ARCHITECTURE.md, "Hosts").
   */
  snapshots?: SnapshotStateMsg[];
  /** The image versions the host holds, as its agent last reported them (live, like `snapshots`). */
  images?: HostImageMsg[];
  /** Cache keys the host holds, from its latest hello or host.status (placement's cache affinity). */
  caches?: ReadonlySet<string>;
  /** The current version of each cache the host holds (the cache relay picks a peer by it). */
  cacheVersions?: ReadonlyMap<string, string>;
  /** The cache transfer version the agent speaks (hello); undefined: it neither fetches nor serves caches. */
  cacheTransfer?: number;
  send(m: ServerMessage): void;
  /** Sends one binary frame (a cache chunk frame, relayed as it came); counted in `bufferedBytes` like any message. */
  sendBinary(frame: Buffer): void;
  /** Bytes sent to the host and still queued on this side of its socket (not yet taken by the kernel): a host that stops reading makes it grow. */
  bufferedBytes?(): number;
  close(code: number, reason: string): void;
}

export class HostRegistry {
  readonly links = new Map<number, HostLink>();

  add(link: HostLink): HostLink | undefined {
    const old = this.links.get(link.hostId);
    this.links.set(link.hostId, link);
    return old === link ? undefined : old;
  }

  remove(link: HostLink): boolean {
    if (this.links.get(link.hostId) !== link) return false;
    this.links.delete(link.hostId);
    return true;
  }

  get(hostId: number): HostLink | undefined {
    return this.links.get(hostId);
  }

  /** One slot object per link, updated in place (a pass reads every host; it allocated two objects per host). */
  private readonly slotOf = new WeakMap<HostLink, HostSlot>();
  private readonly slotList: HostSlot[] = [];

  /**
   * Hosts the scheduler may place on, with what is free on each. The slots are updated in place by the next
   * call, and so is the array: read them within one pass (placement copies what it changes). Passes run
   * hundreds of times a second, and a new 1,000-entry array each time was the embedded server's largest
   * source of garbage kept past the young generation (~2 MB/s at 200 jobs/s).
   */
  slots(): HostSlot[] {
    const out = this.slotList;
    let n = 0;
    for (const l of this.links.values()) {
      if (!l.ready || !l.schedulable) continue;
      let slot = this.slotOf.get(l);
      if (!slot) {
        slot = { id: l.hostId, arch: l.arch, labels: l.labels, capacity: l.capacity, free: { cpus: 0, memoryBytes: 0, diskBytes: 0 } };
        this.slotOf.set(l, slot);
      }
      if (l.caches) slot.caches = l.caches;
      else delete slot.caches;
      const u = l.active.used;
      slot.free.cpus = l.capacity.cpus - u.cpus;
      slot.free.memoryBytes = l.capacity.memoryBytes - u.memoryBytes;
      slot.free.diskBytes = l.capacity.diskBytes - u.diskBytes;
      out[n++] = slot;
    }
    out.length = n;
    return out;
  }
}
