/**
 * What the scheduler needs from the hosts connected to this replica: the port it places through. The agent
 * side implements it (agents/host-registry.ts's HostRegistry, one link per agent WebSocket) and server.ts
 * hands it over, so the scheduler imports nothing from agents/ and the agents import from here only the
 * placement types.
 */
import type { ServerMessage } from '../../core/agent-protocol.ts';
import type { HostSlot } from './placement.ts';

/** A job this replica believes occupies a host (placed, booting or running), with what it reserved. */
export interface LaunchedJob {
  attempt: number;
  cpus: number;
  memoryBytes: number;
  diskBytes: number;
}

/** One connected host, as the scheduler sees it. */
export interface PoolHost {
  readonly hostId: number;
  /** Jobs on the host by job id; setting one reserves its resources in the host's ledger. */
  readonly active: ReadonlyMap<number, LaunchedJob> & { set(id: number, job: LaunchedJob): unknown };
  /** Jobs a stop was sent for and not yet confirmed. */
  readonly stopping: Set<number>;
  schedulable: boolean;
  send(m: ServerMessage): void;
}

export interface HostPool {
  readonly links: ReadonlyMap<number, PoolHost>;
  get(hostId: number): PoolHost | undefined;
  /** Hosts the scheduler may place on, with what is free on each (valid until the next call). */
  slots(): HostSlot[];
}
