import { sql, type Kysely } from 'kysely';

/**
 * Guest egress allowlists set in the server (docs/network.md, "Allowlists per tenant and repository"):
 * - egress_policies: one allowlist per tenant (kind 'tenant') or GitHub repository (kind 'repo', scope
 *   `owner/name` in lower case), delivered to the agent with each job that has a network;
 * - jobs.egress_repo: the GitHub repository a runner VM serves (null for other jobs), so its repository's
 *   allowlist applies.
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await sql`CREATE TABLE egress_policies (
    kind text NOT NULL CHECK (kind IN ('tenant', 'repo')),
    scope text NOT NULL,
    allow jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, scope)
  )`.execute(db);
  await sql`ALTER TABLE jobs ADD COLUMN egress_repo text`.execute(db);
}
