/**
 * Opening the store: embedded PGlite in the data directory by default, or a PostgreSQL server when a
 * `postgres://` URL is given. Both run the same migrations and the same queries (Kysely, PostgreSQL dialect).
 */
import { spawn } from 'node:child_process';
import { accessSync, constants, existsSync, mkdirSync, readdirSync, renameSync, rmdirSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, basename, join } from 'node:path';
import { pathToFileURL } from 'node:url';
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

/**
 * The embedded PostgreSQL's settings beyond PGlite's own: kiln's tables are small and PGlite's files sit
 * in the host's page cache anyway, so 16 MB of shared buffers (PostgreSQL's default is 128 MB, all of it
 * WebAssembly memory that never shrinks) keep the server's memory low without slowing it measurably.
 */
const PGLITE_SETTINGS = ['-c', 'shared_buffers=16MB'];

/**
 * Creating a new embedded database (initdb) takes about 500 MB that the process never gives back, so it
 * runs in a short-lived child process, into a sibling directory renamed into place only when complete:
 * an interrupted creation leaves no half-made database behind.
 */
async function createPgliteDir(dataDir: string): Promise<void> {
  const prefix = `.${basename(dataDir)}.init-`;
  // What an interrupted creation left (its process is gone) goes first.
  for (const f of readdirSync(dirname(dataDir))) {
    if (!f.startsWith(prefix)) continue;
    const pid = Number(f.slice(prefix.length));
    let alive = false;
    try {
      process.kill(pid, 0);
      alive = pid !== process.pid;
    } catch {
      /* gone */
    }
    if (!alive) rmSync(join(dirname(dataDir), f), { recursive: true, force: true });
  }
  const tmp = join(dirname(dataDir), `${prefix}${process.pid}`);
  const entry = pathToFileURL(createRequire(import.meta.url).resolve('@electric-sql/pglite')).href;
  const script = `const { PGlite } = await import(${JSON.stringify(entry)});
const db = await PGlite.create({ dataDir: ${JSON.stringify(tmp)}, startParams: [...PGlite.defaultStartParams, ...${JSON.stringify(PGLITE_SETTINGS)}] });
await db.query('SELECT 1');
await db.close();`;
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const code = await new Promise<number | null>((resolve) => {
    child.on('error', () => resolve(-1));
    child.on('close', resolve);
  });
  if (code !== 0) {
    rmSync(tmp, { recursive: true, force: true });
    throw new KilnError('store.open_failed', `could not create the embedded database in ${dataDir}: ${err.trim().split('\n').slice(-3).join(' | ') || `exit ${code}`}`, {
      hint: 'check that the data directory is writable and the disk has room',
    });
  }
  // Only an empty directory is replaced: if another process created the database meanwhile, keep its one.
  try {
    rmdirSync(dataDir);
    renameSync(tmp, dataDir);
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true });
    if (!existsSync(join(dataDir, 'PG_VERSION'))) throw e;
  }
}

/** Why an embedded database directory cannot be opened, when it can be told from the outside (PGlite says only "failed to initialize"). */
export function diagnoseDataDir(dataDir: string): string | undefined {
  try {
    accessSync(dataDir, constants.R_OK | constants.W_OK | constants.X_OK);
  } catch {
    return `the directory is not readable and writable by this user (uid ${process.getuid?.() ?? '?'})`;
  }
  const version = join(dataDir, 'PG_VERSION');
  if (!existsSync(version)) return readdirSync(dataDir).length > 0 ? 'the directory is not empty and holds no database (no PG_VERSION file)' : undefined;
  try {
    accessSync(version, constants.R_OK);
  } catch {
    return 'its PG_VERSION file is not readable by this user';
  }
  return undefined;
}

async function makePgliteStore(dataDir?: string): Promise<Store> {
  const { PGlite } = await import('@electric-sql/pglite');
  if (dataDir) {
    mkdirSync(dataDir, { recursive: true });
    if (!existsSync(join(dataDir, 'PG_VERSION')) && readdirSync(dataDir).length === 0) await createPgliteDir(dataDir);
  }
  let pglite;
  try {
    pglite = await PGlite.create({ ...(dataDir ? { dataDir } : {}), startParams: [...PGlite.defaultStartParams, ...PGLITE_SETTINGS] });
  } catch (e) {
    // The real cause goes into the message: "another process uses it" is one cause among several (a
    // damaged or foreign database, permissions, a full disk, a database from another PostgreSQL version).
    const cause = (dataDir ? diagnoseDataDir(dataDir) : undefined) ?? (e instanceof Error ? e.message : String(e));
    throw new KilnError('store.open_failed', `could not open the embedded database${dataDir ? ` in ${dataDir}` : ''}: ${cause.split('\n')[0]!.slice(0, 500) || 'unknown error'}`, {
      cause: e,
      hint: dataDir
        ? `check that ${dataDir} is readable and writable and the disk has room; if another kiln process uses it, stop that process or pass a different --data-dir; if the database is damaged, move the directory aside`
        : 'check that the process has memory to spare',
    });
  }
  // A directory or memory: syncToFs() has nothing to do on either.
  const db = new Kysely<Database>({ dialect: makePgliteDialect(pglite, { syncToFs: false }) });
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
