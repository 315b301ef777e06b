import { sql, type Kysely } from 'kysely';

/**
 * What happened to a job's warm cache, as its agent reported with the result (docs/caches.md): hit or miss,
 * the version read, the version committed (with its checksum) or why not, a fetch from a peer host. Null: the
 * job had no cache, or has not finished. The usage records carry it, and the cache relay looks a version's
 * committed checksum up by its id (the index).
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await sql`ALTER TABLE jobs ADD COLUMN cache_outcome jsonb`.execute(db);
  await sql`CREATE INDEX jobs_cache_committed ON jobs ((cache_outcome->'committed'->>'id')) WHERE cache_outcome ? 'committed'`.execute(db);
}
