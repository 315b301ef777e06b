/**
 * Opening the store: embedded PGlite in the data directory by default, or a PostgreSQL server when a
 * `postgres://` URL is given. Both run the same migrations and the same queries (Kysely, PostgreSQL dialect).
 */
import { mkdirSync } from 'node:fs';
import { Kysely, Migrator, PostgresDialect, sql, type Transaction } from 'kysely';
import pg from 'pg';
import { KilnError } from '../core/errors.ts';
import { MIGRATIONS } from './migrations/index.ts';
import { makePgliteDialect } from './pglite-dialect.ts';
import type { Database } from './schema.ts';

export type Db = Kysely<Database>;
export type Tx = Transaction<Database>;

export interface StoreOptions {
  /** `postgres://…` for a server; otherwise the embedded store. */
  databaseUrl?: string;
  /** Directory for the embedded store; omitted means in memory (tests, throwaway `kiln run`). */
  dataDir?: string;
  /** PostgreSQL pool size. */
  poolSize?: number;
}

export interface Store {
  readonly kind: 'pglite' | 'postgres';
  readonly db: Db;
  withTransaction<T>(cb: (tx: Tx) => Promise<T>): Promise<T>;
  /**
   * Takes a session-level advisory lock on a connection of its own and holds it until `release()` or until
   * that connection dies (a crashed replica loses leadership with its connection). Undefined if taken.
   */
  tryAdvisoryLock(key: number): Promise<{ release(): Promise<void>; lost: Promise<void> } | undefined>;
  close(): Promise<void>;
}

const INT8 = 20;

/** pg returns bigint as strings; kiln's ids and byte counts fit in a double, so parse them as numbers. */
const pgTypes = {
  getTypeParser(oid: number, format?: 'text' | 'binary') {
    if (oid === INT8) return (v: string) => Number(v);
    return pg.types.getTypeParser(oid, format as 'text');
  },
};

export async function openStore(opts: StoreOptions): Promise<Store> {
  let store: Store;
  if (opts.databaseUrl) {
    if (!/^postgres(ql)?:\/\//.test(opts.databaseUrl)) {
      throw new KilnError('config.bad_database_url', 'the database URL must start with postgres://');
    }
    store = makePgStore(opts.databaseUrl, opts.poolSize ?? 10);
  } else {
    store = await makePgliteStore(opts.dataDir);
  }
  try {
    await migrate(store.db);
  } catch (e) {
    await store.close();
    throw e;
  }
  return store;
}

function makePgStore(url: string, poolSize: number): Store {
  const pool = new pg.Pool({ connectionString: url, max: poolSize, types: pgTypes });
  // An idle client's error (server restart) must not crash the process; the pool replaces the client.
  pool.on('error', () => {});
  const db = new Kysely<Database>({ dialect: new PostgresDialect({ pool }) });
  return {
    kind: 'postgres',
    db,
    withTransaction: (cb) => db.transaction().execute(cb),
    async tryAdvisoryLock(key) {
      const client = new pg.Client({ connectionString: url, types: pgTypes });
      let lostResolve!: () => void;
      const lost = new Promise<void>((r) => (lostResolve = r));
      client.on('error', () => lostResolve());
      client.on('end', () => lostResolve());
      await client.connect();
      const r = await client.query<{ ok: boolean }>('SELECT pg_try_advisory_lock($1) AS ok', [key]);
      if (!r.rows[0]?.ok) {
        await client.end();
        return undefined;
      }
      return {
        lost,
        async release() {
          await client.query('SELECT pg_advisory_unlock($1)', [key]).catch(() => {});
          await client.end().catch(() => {});
        },
      };
    },
    close: () => db.destroy(),
  };
}

async function makePgliteStore(dataDir?: string): Promise<Store> {
  const { PGlite } = await import('@electric-sql/pglite');
  if (dataDir) mkdirSync(dataDir, { recursive: true });
  let pglite;
  try {
    pglite = await PGlite.create(dataDir ? { dataDir } : {});
  } catch (e) {
    throw new KilnError('store.open_failed', `could not open the embedded database${dataDir ? ` in ${dataDir}` : ''}`, {
      cause: e,
      hint: 'another kiln process may be using this data directory; stop it or pass a different --data-dir',
    });
  }
  const db = new Kysely<Database>({ dialect: makePgliteDialect(pglite) });
  let closed = false;
  return {
    kind: 'pglite',
    db,
    withTransaction: (cb) => db.transaction().execute(cb),
    // One process owns an embedded store, so it is always the leader.
    async tryAdvisoryLock() {
      return { lost: new Promise<void>(() => {}), async release() {} };
    },
    async close() {
      if (closed) return;
      closed = true;
      await db.destroy();
      await pglite.close();
    },
  };
}

export async function migrate(db: Db): Promise<void> {
  // Replicas starting together run this at once: Kysely's migrator serialises them on an advisory lock.
  const migrator = new Migrator({
    db,
    provider: { getMigrations: async () => MIGRATIONS },
    migrationTableName: 'kiln_migrations',
    migrationLockTableName: 'kiln_migrations_lock',
    // 0003 shipped after 0100 (GitHub's range): run missing migrations even when a later one is applied.
    allowUnorderedMigrations: true,
  });
  const { error, results } = await migrator.migrateToLatest();
  if (error) {
    const failed = results?.find((r) => r.status === 'Error');
    throw new KilnError('store.migration_failed', `database migration ${failed?.migrationName ?? ''} failed`, {
      cause: error,
      kind: 'internal',
      hint: 'check the database log; the database was left at the last migration that succeeded',
    });
  }
}

export { sql };
