import { sql, type Kysely } from 'kysely';

/**
 * The queue indexed per tenant in claim order, so a scheduling pass reads only the head of each tenant's
 * queue (a few thousand index entries) instead of ranking every queued job. It replaces the global
 * (priority, id) index, which only answered "is anything queued", as this one does.
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await sql`CREATE INDEX jobs_queued_tenant ON jobs (tenant, priority DESC, id) WHERE state = 'queued'`.execute(db);
  await sql`DROP INDEX jobs_queued`.execute(db);
}
