import { sql, type Kysely } from 'kysely';

/** The `viewer` token role: people who watch the dashboard (read only, like `read-only`). */
export async function up(db: Kysely<unknown>): Promise<void> {
  await sql`ALTER TABLE tokens DROP CONSTRAINT tokens_role_check`.execute(db);
  await sql`ALTER TABLE tokens ADD CONSTRAINT tokens_role_check CHECK (role IN ('admin','operator','read-only','viewer','agent'))`.execute(db);
}
