/**
 * GitHub metrics on the server's registry: webhook deliveries by answer (this replica), and, read from the
 * store at each scrape (fleet-wide), GitHub jobs by decision and state, runners by state, and deliveries
 * waiting to be processed.
 */
import { Counter, Gauge } from 'prom-client';
import { sql } from 'kysely';
import type { ServerContext } from '../context.ts';

export interface GitHubMetrics {
  deliveries: Counter<'result'>;
}

export function makeGitHubMetrics(ctx: ServerContext): GitHubMetrics {
  const registers = [ctx.metrics.registry];
  const db = ctx.store.db;
  new Gauge({
    name: 'kiln_github_jobs',
    help: "GitHub jobs kiln has seen, by kiln's decision and the job's state on GitHub",
    labelNames: ['decision', 'state'],
    registers,
    async collect() {
      const rows = await db
        .selectFrom('github_jobs')
        .select(['decision', 'state', sql<number>`count(*)::int`.as('n')])
        .groupBy(['decision', 'state'])
        .execute()
        .catch(() => []);
      this.reset();
      for (const r of rows) this.set({ decision: r.decision, state: r.state }, r.n);
    },
  });
  new Gauge({
    name: 'kiln_github_runners',
    help: 'JIT runners kiln registered, by state',
    labelNames: ['state'],
    registers,
    async collect() {
      const rows = await db
        .selectFrom('github_runners')
        .select(['state', sql<number>`count(*)::int`.as('n')])
        .where('state', '<>', 'gone')
        .groupBy('state')
        .execute()
        .catch(() => []);
      this.reset();
      for (const r of rows) this.set({ state: r.state }, r.n);
    },
  });
  new Gauge({
    name: 'kiln_github_deliveries_pending',
    help: 'Webhook deliveries accepted and not yet processed',
    registers,
    async collect() {
      const r = await db
        .selectFrom('github_deliveries')
        .select(sql<number>`count(*)::int`.as('n'))
        .where('status', '=', 'pending')
        .executeTakeFirst()
        .catch(() => undefined);
      this.set(r?.n ?? 0);
    },
  });
  return {
    deliveries: new Counter({
      name: 'kiln_github_webhook_deliveries_total',
      help: 'Webhook deliveries this replica answered, by result (accepted, duplicate, ping, refused)',
      labelNames: ['result'],
      registers,
    }),
  };
}
