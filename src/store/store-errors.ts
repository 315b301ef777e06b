/**
 * Store errors as they may be logged. A PostgreSQL error (from pg or PGlite) carries the values it refused:
 * `detail` ("Failing row contains (…)", with a job's env and secrets), `where` ("JSON data, line 1: …"),
 * `internalQuery`, and a message that may quote a value (`invalid input syntax for type json: "…"`). The
 * logged form keeps what tells an operator what failed (SQLSTATE code, table, column, constraint, routine,
 * the message with quoted values replaced) and drops the rest, for the error and every `cause` under it.
 */

const KEEP = ['code', 'severity', 'table', 'column', 'constraint', 'dataType', 'routine', 'schema'] as const;

/** Replaces quoted values and anything after "contains"/"Key (…)=" in a database message. */
export function redactDbMessage(message: string): string {
  return message
    .replace(/"(?:[^"\\]|\\.)*"/g, '"[redacted]"')
    .replace(/(Failing row contains|Key \([^)]*\)=)\s*\(.*$/s, '$1 ([redacted])')
    .replace(/(JSON data, line \d+:).*$/s, '$1 [redacted]');
}

/** Whether an error came from the database (pg's DatabaseError, PGlite's, with a SQLSTATE). */
const isDbError = (e: unknown): e is Error & Record<string, unknown> => {
  if (!(e instanceof Error)) return false;
  const code = (e as unknown as { code?: unknown }).code;
  return typeof code === 'string' && /^[0-9A-Z]{5}$/.test(code) && ('severity' in e || 'routine' in e || 'detail' in e || 'where' in e);
};

/** A loggable copy of `e` with every database error in its cause chain stripped of values (pino's `err` serializer). */
export function errorForLog(e: unknown, depth = 0): unknown {
  if (!(e instanceof Error) || depth > 5) return e;
  const out: Record<string, unknown> = { type: e.constructor.name };
  if (isDbError(e)) {
    const message = redactDbMessage(e.message);
    out.message = message;
    for (const k of KEEP) if (e[k] !== undefined) out[k] = e[k];
    out.stack = `${e.name}: ${message}\n${(e.stack ?? '').split('\n').filter((l) => /^\s+at /.test(l)).join('\n')}`;
  } else {
    out.message = e.message;
    out.stack = e.stack;
    for (const [k, v] of Object.entries(e)) if (k !== 'cause' && (typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean')) out[k] = v;
  }
  if (e.cause !== undefined) out.cause = errorForLog(e.cause, depth + 1);
  return out;
}
