/**
 * Stores for tests: every storage test runs against both PGlite and a real PostgreSQL server. Each test
 * gets a database of its own (PGlite: a fresh in-memory instance; PostgreSQL: a fresh database).
 * KILN_TEST_DATABASE_URL names the server (scripts/ci-postgres.sh starts one). On CI (CI=true) a missing
 * server fails the run; locally the PostgreSQL variants are skipped with a message.
 */
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { openStore, type Store } from '../../src/store/store.ts';

export type StoreKind = 'pglite' | 'postgres';

export const testDatabaseUrl = process.env.KILN_TEST_DATABASE_URL;
const onCi = process.env.CI === 'true' || process.env.CI === '1';

/** The store kinds to run against, and why one is skipped (undefined when both run). */
export function storeKinds(): { kind: StoreKind; skip: string | false }[] {
  if (!testDatabaseUrl && onCi) {
    throw new Error('KILN_TEST_DATABASE_URL is not set on CI: run `eval "$(bash scripts/ci-postgres.sh)"` first (.ci/run does)');
  }
  return [
    { kind: 'pglite', skip: false },
    { kind: 'postgres', skip: testDatabaseUrl ? false : 'KILN_TEST_DATABASE_URL is not set (run scripts/ci-postgres.sh); PostgreSQL variant skipped locally' },
  ];
}

/** Creates an empty database on the test server and returns its URL plus a function that drops it. */
export async function makeTestDatabase(): Promise<{ url: string; drop(): Promise<void> }> {
  if (!testDatabaseUrl) throw new Error('KILN_TEST_DATABASE_URL is not set');
  const name = `kiln_t_${randomBytes(6).toString('hex')}`;
  const admin = new pg.Client({ connectionString: testDatabaseUrl });
  await admin.connect();
  try {
    await admin.query(`CREATE DATABASE ${name}`);
  } finally {
    await admin.end();
  }
  const u = new URL(testDatabaseUrl);
  u.pathname = `/${name}`;
  return {
    url: u.toString(),
    async drop() {
      const c = new pg.Client({ connectionString: testDatabaseUrl });
      await c.connect();
      try {
        await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      } finally {
        await c.end();
      }
    },
  };
}

/** A migrated store of the given kind; `close()` also drops the PostgreSQL database. */
export async function makeTestStore(kind: StoreKind): Promise<Store & { url?: string }> {
  if (kind === 'pglite') return openStore({});
  const tdb = await makeTestDatabase();
  const store = await openStore({ databaseUrl: tdb.url, poolSize: 5 });
  return {
    ...store,
    url: tdb.url,
    async close() {
      await store.close();
      await tdb.drop();
    },
  };
}
