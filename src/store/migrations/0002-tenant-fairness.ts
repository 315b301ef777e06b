import { sql, type Kysely } from 'kysely';

/** When each tenant last had a job placed: the queue serves the tenant that waited longest first. */
export async function up(db: Kysely<unknown>): Promise<void> {
  await sql`ALTER TABLE tenants ADD COLUMN last_placed_at timestamptz`.execute(db);
}
