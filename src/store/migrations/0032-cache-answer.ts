import { sql, type Kysely } from 'kysely';

/**
 * The server's own answer to a `cache.ask` (docs/caches.md, "GitHub decides after the job"): for a job whose
 * cache write is decided after it ran (`write: 'ask'`), whether the server allowed the commit, for which
 * attempt, and the ref and commit it gave. Null: never asked. The cache relay trusts a version such a job's
 * host reports committed only when this says yes for that attempt; a host's word alone is not enough.
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await sql`ALTER TABLE jobs ADD COLUMN cache_answer jsonb`.execute(db);
}
