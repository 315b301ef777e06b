import type { ServerContext } from '../context.ts';
import type { HostRegistry } from '../agents/host-registry.ts';
import type { JobCommands } from '../jobs/job-commands.ts';

export interface ApiDeps {
  ctx: ServerContext;
  registry: HostRegistry;
  /** Ask the scheduler for a pass. */
  kick(): void;
  /** Tell the scheduler a tenant limit changed. */
  limitsChanged(): void;
  /** The door for job changes (submit, cancel). */
  jobs: JobCommands;
}
