import { sql, type Kysely } from 'kysely';

/**
 * Warm cache disks (docs/caches.md): a job's cache request ({key, write, sizeBytes?, ref?, commit?}, null: none)
 * and each host's caches as its agent last reported them (null: none reported).
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await sql`ALTER TABLE jobs ADD COLUMN cache jsonb`.execute(db);
  await sql`ALTER TABLE hosts ADD COLUMN caches jsonb`.execute(db);
}
