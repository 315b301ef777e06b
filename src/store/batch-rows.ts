/** A batch of rows sent with one statement, as a FROM item the statement joins to its tables. */
import { sql, type RawBuilder } from 'kysely';

/** Most rows sent as a VALUES list (one statement text per count up to here). */
const SHORT = 8;

export type BatchColumn = readonly [name: string, type: 'bigint' | 'int' | 'text' | 'boolean'];

/**
 * `(VALUES (…), …) AS alias(columns)` for a short batch, `jsonb_to_recordset($1) AS alias(columns)` for a
 * longer one. The planner knows how many rows a VALUES list has; a JSON batch it always takes for 100 rows,
 * and for that many it joins by hashing a scan of the whole table on any table short of some tens of
 * thousands of rows. The common batch at a steady rate is one or two rows, where that scan, in proportion to
 * every job ever stored, cost more than the update (a result: 1.2 ms against 0.4 ms on 2,000 jobs).
 * Batches past SHORT rows keep one statement text, whose hash join is the right plan for them.
 */
export function batchRows(alias: string, columns: readonly BatchColumn[], rows: readonly Record<string, unknown>[]): RawBuilder<unknown> {
  const names = sql.join(columns.map(([n]) => sql.ref(n)));
  if (rows.length <= SHORT) {
    const tuples = rows.map((r) => sql`(${sql.join(columns.map(([n, t]) => sql`${sql.val(r[n] ?? null)}::${sql.raw(t)}`))})`);
    return sql`(VALUES ${sql.join(tuples)}) AS ${sql.ref(alias)}(${names})`;
  }
  const typed = sql.join(columns.map(([n, t]) => sql`${sql.ref(n)} ${sql.raw(t)}`));
  return sql`jsonb_to_recordset(${JSON.stringify(rows)}::jsonb) AS ${sql.ref(alias)}(${typed})`;
}
