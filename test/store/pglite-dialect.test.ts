// The embedded store's statement cache: a text used often runs as a named prepared statement, with the
// same results and the same errors as PGlite's own unnamed path, inside and outside transactions.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { PGlite } from '@electric-sql/pglite';
import { Kysely, sql } from 'kysely';
import { makePgliteDialect } from '../../src/store/pglite-dialect.ts';

interface Row {
  id: number;
  name: string;
  tags: string[];
  doc: unknown;
  at: Date | null;
  ok: boolean;
}
let pg: PGlite;
let db: Kysely<{ t: Row }>;

before(async () => {
  pg = await PGlite.create();
  db = new Kysely<{ t: Row }>({ dialect: makePgliteDialect(pg) });
  await sql`CREATE TABLE t (id bigint PRIMARY KEY, name text NOT NULL, tags text[] NOT NULL, doc jsonb, at timestamptz, ok boolean NOT NULL)`.execute(db);
});
after(async () => {
  await db.destroy();
  await pg.close();
});

const prepared = async (): Promise<string[]> =>
  (await pg.query<{ statement: string }>('SELECT statement FROM pg_prepared_statements ORDER BY name')).rows.map((r) => r.statement);

void test('a statement used a few times is prepared; every type reads and writes the same either way', async () => {
  const at = new Date('2026-12-04T10:00:00.123Z');
  const writes = [];
  for (let i = 1; i <= 6; i++) {
    // Kysely's own insert: the same text each time, with parameters of every kind.
    writes.push(await db.insertInto('t').values({ id: i, name: `n'${i} "q" ü`, tags: ['a b', 'c,d', '{e}'], doc: JSON.stringify({ k: [i, null, 'x'] }), at: i % 2 ? at : null, ok: i % 2 === 0 }).executeTakeFirst());
  }
  assert.deepEqual(writes.map((w) => Number(w.numInsertedOrUpdatedRows)), [1, 1, 1, 1, 1, 1], 'row counts come back from prepared runs too');
  const reads = [];
  for (let i = 1; i <= 6; i++) reads.push(await db.selectFrom('t').selectAll().where('id', '=', i).executeTakeFirstOrThrow());
  for (const [i, r] of reads.entries()) {
    assert.deepEqual(r, { id: i + 1, name: `n'${i + 1} "q" ü`, tags: ['a b', 'c,d', '{e}'], doc: { k: [i + 1, null, 'x'] }, at: (i + 1) % 2 ? at : null, ok: (i + 1) % 2 === 0 });
  }
  const statements = await prepared();
  assert.ok(statements.some((s) => /^insert into "t"/.test(s)), `the insert is prepared: ${statements.join(' | ')}`);
  assert.ok(statements.some((s) => /^select \* from "t" where "id" = \$1/.test(s)), 'the select is prepared');
  const updated = await db.updateTable('t').set({ ok: true }).where('id', '>', 0).executeTakeFirst();
  assert.equal(Number(updated.numUpdatedRows), 6);
});

void test('a prepared statement that fails raises the database error; its transaction rolls back and the session goes on', async () => {
  const insert = (id: number) => db.insertInto('t').values({ id, name: 'x', tags: [], doc: null, at: null, ok: true }).execute();
  for (let i = 100; i < 104; i++) await insert(i); // prepared by now
  await assert.rejects(insert(100), (e: { code?: string }) => e.code === '23505', 'duplicate key, as unprepared');
  await assert.rejects(
    db.transaction().execute(async (tx) => {
      await tx.insertInto('t').values({ id: 200, name: 'in tx', tags: [], doc: null, at: null, ok: true }).execute();
      await tx.insertInto('t').values({ id: 100, name: 'dup', tags: [], doc: null, at: null, ok: true }).execute();
    }),
    (e: { code?: string }) => e.code === '23505',
  );
  assert.equal(await db.selectFrom('t').select('id').where('id', '=', 200).executeTakeFirst(), undefined, 'the transaction rolled back');
  await insert(300);
  assert.equal((await db.selectFrom('t').select('name').where('id', '=', 300).executeTakeFirstOrThrow()).name, 'x', 'the session works after the error');
  // Committed work inside a transaction through prepared statements stays.
  await db.transaction().execute(async (tx) => {
    for (let i = 400; i < 405; i++) await tx.insertInto('t').values({ id: i, name: 'tx', tags: [], doc: null, at: null, ok: true }).execute();
  });
  assert.equal((await db.selectFrom('t').select(sql<number>`count(*)::int`.as('n')).where('name', '=', 'tx').executeTakeFirstOrThrow()).n, 5);
});

void test('a commit that fails (a deferred constraint) raises the database error, keeps nothing, and the session goes on', async () => {
  await sql`CREATE TABLE d (k int, CONSTRAINT d_k UNIQUE (k) DEFERRABLE INITIALLY DEFERRED)`.execute(db);
  const d = db as unknown as Kysely<{ d: { k: number } }>;
  await assert.rejects(
    d.transaction().execute(async (tx) => {
      await tx.insertInto('d').values({ k: 1 }).execute();
      await tx.insertInto('d').values({ k: 1 }).execute(); // only checked at COMMIT
    }),
    (e: { code?: string }) => e.code === '23505',
  );
  assert.equal((await d.selectFrom('d').select(sql<number>`count(*)::int`.as('n')).executeTakeFirstOrThrow()).n, 0, 'nothing of it kept');
  await d.transaction().execute(async (tx) => {
    await tx.insertInto('d').values({ k: 2 }).execute();
  });
  assert.deepEqual(await d.selectFrom('d').select('k').execute(), [{ k: 2 }], 'the next transaction commits');
  // A rollback on request ends the transaction too.
  await assert.rejects(
    d.transaction().execute(async (tx) => {
      await tx.insertInto('d').values({ k: 3 }).execute();
      throw new Error('changed my mind');
    }),
    /changed my mind/,
  );
  assert.deepEqual(await d.selectFrom('d').select('k').execute(), [{ k: 2 }]);
});

void test('prepared statements are made again after their time, and a statement that starts with a comment never is', async () => {
  const pg2 = await PGlite.create();
  const db2 = new Kysely<{ t: Row }>({ dialect: makePgliteDialect(pg2, { planTtlMs: 200 }) });
  try {
    await sql`CREATE TABLE t (id bigint PRIMARY KEY, name text NOT NULL, tags text[] NOT NULL, doc jsonb, at timestamptz, ok boolean NOT NULL)`.execute(db2);
    const names = async () => (await pg2.query<{ name: string; statement: string }>('SELECT name, statement FROM pg_prepared_statements')).rows;
    const read = () => db2.selectFrom('t').select('id').where('id', '=', 1).execute();
    for (let i = 0; i < 4; i++) await read();
    const [first] = await names();
    assert.ok(first, 'prepared');
    await new Promise((r) => setTimeout(r, 300));
    await read();
    const now = await names();
    assert.equal(now.length, 1, 'the old one was dropped');
    assert.notEqual(now[0]!.name, first.name, 'and made again');
    for (let i = 0; i < 5; i++) await sql`/* planned each time */ SELECT count(*) FROM t WHERE id > ${i}`.execute(db2);
    assert.equal((await names()).length, 1, 'the commented statement stays unprepared');
  } finally {
    await db2.destroy();
    await pg2.close();
  }
});
