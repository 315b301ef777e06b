import { sql, type Kysely } from 'kysely';

/**
 * `Idempotency-Key` on job submission: one row per key and tenant, naming the job the first request made
 * and a hash of its body, kept for a window (store/submissions.ts) and purged by the leader after it.
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await sql`
    CREATE TABLE job_submissions (
      tenant text NOT NULL,
      idempotency_key text NOT NULL,
      request_hash text NOT NULL,
      job_id bigint NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
      created_at timestamptz NOT NULL DEFAULT now(),
      PRIMARY KEY (tenant, idempotency_key)
    )`.execute(db);
  await sql`CREATE INDEX job_submissions_created ON job_submissions (created_at)`.execute(db);
}
