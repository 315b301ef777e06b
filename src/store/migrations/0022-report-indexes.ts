import { sql, type Kysely } from 'kysely';

/**
 * An index for the reports and the dashboard's usage page: windows over finished jobs (`finished_at >= since`,
 * a day out of months of history). The GitHub side's index is 0103 (github_usage is created by 0100).
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await sql`CREATE INDEX IF NOT EXISTS jobs_finished_at ON jobs (finished_at) WHERE finished_at IS NOT NULL`.execute(db);
}
