/**
 * A Kysely dialect for PGlite (PostgreSQL compiled to WASM, in-process). PGlite is one session, so the
 * "pool" hands out that session to one user at a time: a transaction holds it from BEGIN to COMMIT and
 * everything else waits its turn. Everything else (SQL compiler, adapter, introspection) is Kysely's own
 * PostgreSQL dialect, so the SQL the server runs is the same on both stores.
 */
import type { PGlite } from '@electric-sql/pglite';
import { PostgresDialect } from 'kysely';

interface PoolClientShim {
  query(sql: string, params: unknown[]): Promise<{ command?: string; rowCount?: number; rows: unknown[] }>;
  release(): void;
}

export function makePgliteDialect(pglite: PGlite): PostgresDialect {
  const waiters: (() => void)[] = [];
  let busy = false;
  const acquire = (): Promise<void> => {
    if (!busy) {
      busy = true;
      return Promise.resolve();
    }
    return new Promise((resolve) => waiters.push(resolve));
  };
  const release = (): void => {
    const next = waiters.shift();
    if (next) next();
    else busy = false;
  };
  const client: PoolClientShim = {
    async query(sql, params) {
      const r = await pglite.query(sql, params);
      return { command: (r as { command?: string }).command, rowCount: (r as { rowCount?: number }).rowCount ?? r.affectedRows ?? 0, rows: r.rows };
    },
    release,
  };
  const pool = {
    async connect() {
      await acquire();
      return client;
    },
    async end() {
      /* the PGlite instance is closed by its owner */
    },
  };
  return new PostgresDialect({ pool: pool as never });
}
