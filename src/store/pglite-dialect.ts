/**
 * A Kysely dialect for PGlite (PostgreSQL compiled to WASM, in-process). PGlite is one session, so the
 * "pool" hands out that session to one user at a time: a transaction holds it from BEGIN to COMMIT and
 * everything else waits its turn. Everything else (SQL compiler, adapter, introspection) is Kysely's own
 * PostgreSQL dialect, so the SQL the server runs is the same on both stores.
 *
 * PGlite's own query() parses and plans every statement anew, and for the scheduler's hot statements
 * planning costs more than running them (a phase update: 1.2 ms planning, 0.4 ms running). So a statement
 * text used a few times becomes a named prepared statement, as node-postgres does with named queries: parsed
 * and described once, then only bound and executed, so PostgreSQL can reuse its plan. It speaks the wire
 * protocol through PGlite's public API and serializes values and parses rows with PGlite's own type
 * handlers, so results are the same either way. A cap keeps the set bounded.
 *
 * A cached plan is made for the tables as they were (PGlite gathers no statistics between upkeeps, so the
 * planner goes by their size), so each prepared statement is dropped and made again after PLAN_TTL_MS,
 * between transactions: a plan made for an empty table does not outlive the table's growth by more than
 * that. The hot statements are written so that no plan the planner may pick for them goes wrong when a
 * table grows (store/jobs.ts: the claim, placing, batch-rows.ts); a statement whose plan must always fit the
 * moment can start with a comment, which keeps it unprepared.
 */
import { parse as pgliteParse, protocol, type PGlite } from '@electric-sql/pglite';
import { PostgresDialect } from 'kysely';

interface PoolClientShim {
  query(sql: string, params: unknown[]): Promise<{ command?: string; rowCount?: number; rows: unknown[] }>;
  release(): void;
}

/** Uses of one statement text before it is prepared. */
const PREPARE_AFTER = 3;
/** At most this many prepared statements; texts seen after that run unprepared (none is evicted to make room). */
const MAX_PREPARED = 200;
/** Texts counted for preparation at most (IN lists of every length would otherwise grow it forever). */
const MAX_COUNTED = 2000;
/** How long a prepared statement (and so its plan) lives, by default. */
const PLAN_TTL_MS = 10_000;
const PREPARABLE = /^\s*(select|insert|update|delete|with)\b/i;
/** What Kysely sends to open and end a transaction. */
const TX_CONTROL = /^(begin|commit|rollback)$/i;

/** Dialects made in this process (statement names must not collide if two share one PGlite). */
let dialects = 0;

type BackendMessage = Awaited<ReturnType<PGlite['execProtocolStream']>>[number];
interface Result {
  command?: string;
  rowCount?: number;
  affectedRows?: number;
  rows: unknown[];
}
interface Named {
  name: string;
  preparedAt: number;
  paramTypes: number[];
  /** The statement's row description (or noData), put before each execution's rows for the row parser. */
  description: BackendMessage[];
}

export interface PgliteDialectOptions {
  /** How long a prepared statement (and so its plan) lives. */
  planTtlMs?: number;
  /**
   * Whether to call PGlite's syncToFs() after each statement outside a transaction, as its query() does
   * (default true). It does nothing on the directory and in-memory file systems (a Node directory is
   * written through as PostgreSQL writes), yet each call allocates a lock's promises and closures: ~1 MB/s
   * of garbage on the embedded server at 200 jobs/s. The store turns it off, since it opens only those.
   */
  syncToFs?: boolean;
}

export function makePgliteDialect(pglite: PGlite, opts: PgliteDialectOptions = {}): PostgresDialect {
  const planTtlMs = opts.planTtlMs ?? PLAN_TTL_MS;
  const syncToFs = opts.syncToFs ?? true;
  const uses = new Map<string, number>();
  const prefix = `kiln_${++dialects}_`;
  /** Whether a transaction is open (Kysely sends begin/commit/rollback as queries through here). */
  let inTransaction = false;
  const named = new Map<string, Named>();
  const ser = protocol.serialize;
  const wire = (m: Uint8Array) => pglite.execProtocolStream(m, { syncToFs: false });

  /** Runs `steps` and always ends with Sync, as PGlite's query() does, so an error leaves a usable session. */
  const exchange = async (steps: () => Promise<BackendMessage[]>): Promise<BackendMessage[]> => {
    let out: BackendMessage[] = [];
    try {
      out = await steps();
    } finally {
      out.push(...(await wire(ser.sync())));
    }
    return out;
  };

  let made = 0;
  const prepare = async (sql: string): Promise<Named> => {
    const name = `${prefix}${++made}`;
    const described = await exchange(async () => [...(await wire(ser.parse({ name, text: sql }))), ...(await wire(ser.describe({ type: 'S', name })))]);
    const n: Named = {
      name,
      preparedAt: performance.now(),
      paramTypes: pgliteParse.parseDescribeStatementResults(described),
      description: described.filter((m) => m.name === 'rowDescription' || m.name === 'noData'),
    };
    named.set(sql, n);
    return n;
  };

  const execute = async (n: Named, params: unknown[]): Promise<Result> => {
    const values = params.map((v, i) => {
      if (v === null || v === undefined) return null;
      const serialize = pglite.serializers[n.paramTypes[i]!];
      return serialize ? serialize(v) : String(v);
    });
    const msgs = await exchange(async () => [...(await wire(ser.bind({ statement: n.name, values }))), ...(await wire(ser.execute({})))]);
    // As query() does outside a transaction (see PgliteDialectOptions.syncToFs).
    if (syncToFs && !inTransaction) await pglite.syncToFs();
    return pgliteParse.parseResults([...n.description, ...msgs], pglite.parsers)[0] as Result;
  };

  const run = async (sql: string, params: unknown[]): Promise<Result> => {
    if (/^\s*(begin|start\s+transaction)\b/i.test(sql)) inTransaction = true;
    // Not `rollback to savepoint …`, which leaves the transaction open.
    else if (/^\s*(commit|rollback)\s*$/i.test(sql)) inTransaction = false;
    if (TX_CONTROL.test(sql) && params.length === 0) {
      // Kysely's begin/commit/rollback, two of every transaction's statements: one simple-query message,
      // without query()'s parse, describe and bind, and its garbage.
      await wire(ser.query(sql));
      if (syncToFs && !inTransaction) await pglite.syncToFs();
      return { command: sql.toUpperCase(), rows: [] };
    }
    const n = named.get(sql);
    if (n && !inTransaction && performance.now() - n.preparedAt > planTtlMs) {
      // Outside a transaction, so DEALLOCATE cannot meet an aborted one; the next line prepares it anew.
      named.delete(sql);
      await pglite.exec(`DEALLOCATE ${n.name}`).catch(() => undefined);
      uses.set(sql, PREPARE_AFTER - 1);
    } else if (n) return execute(n, params);
    if (named.size < MAX_PREPARED && PREPARABLE.test(sql)) {
      const count = (uses.get(sql) ?? 0) + 1;
      if (count >= PREPARE_AFTER) {
        uses.delete(sql);
        // Runs unnamed first: a text that fails (in a failed transaction, say) fails as it always would.
        const r = await pglite.query(sql, params);
        await prepare(sql).catch(() => undefined);
        return r;
      }
      if (uses.size < MAX_COUNTED || uses.has(sql)) uses.set(sql, count);
    }
    return pglite.query(sql, params);
  };

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
      const r = await run(sql, params);
      return { command: r.command, rowCount: r.rowCount ?? r.affectedRows ?? 0, rows: r.rows };
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
