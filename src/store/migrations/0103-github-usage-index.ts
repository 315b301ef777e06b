import { sql, type Kysely } from 'kysely';

/** The reports' join from a job to its GitHub usage record (usage by repository, organisation, user). */
export async function up(db: Kysely<unknown>): Promise<void> {
  await sql`CREATE INDEX IF NOT EXISTS github_usage_kiln_job ON github_usage (kiln_job_id) WHERE kiln_job_id IS NOT NULL`.execute(db);
}
