import type { ServerContext } from '../context.ts';
import type { HostRegistry } from '../agents/host-registry.ts';
import type { JobCommands } from '../jobs/job-commands.ts';

export interface ApiDeps {
  ctx: ServerContext;
  registry: HostRegistry;
  /** The scheduler (server/scheduler/scheduler.ts), as far as the routes use it. */
  scheduler: SchedulerControl;
  /** The door for job changes (submit, cancel). */
  jobs: JobCommands;
  /** Close this replica's agent connections made with a revoked token (others notice within a heartbeat). */
  closeToken(tokenId: number): void;
}

/** What the routes ask of the scheduler (the routes do not import it: lint keeps http/ and scheduler/ apart). */
export interface SchedulerControl {
  /** Asks for a pass (a host can take jobs again). */
  kick(): void;
  /** A tenant limit changed here. */
  limitsChanged(): void;
}
