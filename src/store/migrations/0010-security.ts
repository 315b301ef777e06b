import { sql, type Kysely } from 'kysely';

/**
 * Security (docs/security.md):
 * - jobs.secret_env: the names of the job's env entries that are secrets (write-only: the API never returns
 *   their values, and their values are masked in stored logs);
 * - hosts.secret_hash: the SHA-256 of the per-host credential the server issued at the host's first
 *   registration; a later hello for that name must present it (or an operator removes the host);
 * - hosts.registered_*: the capacity the host reported at its first registration; a reconnect may report
 *   less, never more, without an operator's action.
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await sql`ALTER TABLE jobs ADD COLUMN secret_env jsonb NOT NULL DEFAULT '[]'::jsonb`.execute(db);
  await sql`ALTER TABLE hosts ADD COLUMN secret_hash text`.execute(db);
  await sql`ALTER TABLE hosts ADD COLUMN registered_cpus integer`.execute(db);
  await sql`ALTER TABLE hosts ADD COLUMN registered_memory_bytes bigint`.execute(db);
  await sql`ALTER TABLE hosts ADD COLUMN registered_disk_bytes bigint`.execute(db);
}
