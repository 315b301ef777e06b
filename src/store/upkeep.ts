/**
 * PostgreSQL's autovacuum, for the embedded store, which has none. Without it every update of a job leaves
 * a dead row version behind for good (a job leaves five or more), indexes keep pointing at them, and the
 * planner never gets statistics. The thresholds are autovacuum's defaults; the counters are the database's
 * own (pg_stat_user_tables, which PGlite keeps). A PostgreSQL server does this itself: never called there.
 */
import { sql } from 'kysely';
import type { Db } from './store.ts';

export interface TableUpkeep {
  table: string;
  vacuum: boolean;
  analyze: boolean;
}

/** Tables whose dead rows or changes since the last ANALYZE passed autovacuum's default thresholds. */
export async function tablesDue(db: Db): Promise<TableUpkeep[]> {
  // This session's counters reach the views at most once a second (and on an embedded store that never
  // idles, maybe never): flush them first, in a statement of its own.
  await sql`SELECT pg_stat_force_next_flush()`.execute(db);
  const r = await sql<{ relname: string; live: number; dead: number; changed: number }>`
    SELECT relname, n_live_tup::float8 AS live, n_dead_tup::float8 AS dead, n_mod_since_analyze::float8 AS changed
    FROM pg_stat_user_tables ORDER BY relname`.execute(db);
  return r.rows
    .map((t) => ({ table: t.relname, vacuum: t.dead > 50 + 0.2 * t.live, analyze: t.changed > 50 + 0.1 * t.live }))
    .filter((t) => t.vacuum || t.analyze);
}

/** Vacuums and/or analyzes each table as it is due; returns how long each took (ms). */
export async function upkeep(db: Db, due: TableUpkeep[]): Promise<{ table: string; what: string; ms: number }[]> {
  const out: { table: string; what: string; ms: number }[] = [];
  for (const t of due) {
    const what = t.vacuum && t.analyze ? 'VACUUM (ANALYZE)' : t.vacuum ? 'VACUUM' : 'ANALYZE';
    const started = performance.now();
    await sql`${sql.raw(what)} ${sql.table(t.table)}`.execute(db);
    out.push({ table: t.table, what, ms: Math.round(performance.now() - started) });
  }
  return out;
}
