import { sql, type Kysely } from 'kysely';

/** The host's registry mirror as its agent last reported it (null: the host runs none). */
export async function up(db: Kysely<unknown>): Promise<void> {
  await sql`ALTER TABLE hosts ADD COLUMN mirror jsonb`.execute(db);
}
