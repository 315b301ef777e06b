import { sql, type Kysely } from 'kysely';

/**
 * Host power (docs/power.md): what each host's agent reports about its power driver, since when a host is
 * in its state (kept by a trigger, so every writer of `state` keeps it true), wake failures, and the
 * durable sleep/wake requests. At most one open request per host (the partial unique index): two replicas
 * or two passes can never both wake one host, and a host gets one sleep or wake at a time.
 * Numbered 0020 to stay clear of other work adding 0005-0019 at the same time (unordered migrations run).
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await sql`ALTER TABLE hosts ADD COLUMN power jsonb`.execute(db);
  await sql`ALTER TABLE hosts ADD COLUMN state_since timestamptz NOT NULL DEFAULT now()`.execute(db);
  await sql`ALTER TABLE hosts ADD COLUMN wake_failures integer NOT NULL DEFAULT 0`.execute(db);
  await sql`ALTER TABLE hosts ADD COLUMN wake_marked_until timestamptz`.execute(db);
  await sql`
    CREATE FUNCTION kiln_host_state_since() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      NEW.state_since := now();
      RETURN NEW;
    END
    $$`.execute(db);
  await sql`
    CREATE TRIGGER hosts_state_since BEFORE UPDATE OF state ON hosts
    FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state) EXECUTE FUNCTION kiln_host_state_since()`.execute(db);
  await sql`
    CREATE TABLE power_requests (
      id bigserial PRIMARY KEY,
      host_id bigint NOT NULL REFERENCES hosts(id) ON DELETE CASCADE,
      kind text NOT NULL CHECK (kind IN ('sleep','wake')),
      state text NOT NULL CHECK (state IN ('pending','sent','done','failed','cancelled')),
      reason text NOT NULL,
      jobs integer NOT NULL DEFAULT 0,
      attempts integer NOT NULL DEFAULT 0,
      lease_owner text,
      lease_until timestamptz,
      not_before timestamptz NOT NULL DEFAULT now(),
      deadline timestamptz,
      error text,
      created_at timestamptz NOT NULL DEFAULT now(),
      sent_at timestamptz,
      done_at timestamptz
    )`.execute(db);
  await sql`CREATE UNIQUE INDEX power_requests_open ON power_requests (host_id) WHERE state IN ('pending','sent')`.execute(db);
  await sql`CREATE INDEX power_requests_recent ON power_requests (created_at)`.execute(db);
}
