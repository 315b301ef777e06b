import type { ServerContext } from '../context.ts';
import type { HostRegistry } from '../agents/host-registry.ts';

export interface ApiDeps {
  ctx: ServerContext;
  registry: HostRegistry;
  /** Ask the scheduler for a pass. */
  kick(): void;
  /** Tell the scheduler a tenant limit changed. */
  limitsChanged(): void;
  /** Send stop to a job's agent if it is connected to this replica. */
  stop(hostId: number, jobId: number, attempt: number, reason: string): boolean;
}
