/**
 * A deterministic text dump of the migrated schema (tables, columns, constraints, indexes, triggers) from the
 * catalog. The committed copy is src/store/schema.sql; test/store/schema-snapshot.test.ts fails when the
 * migrations drift from it and rewrites it when run with KILN_UPDATE_SCHEMA_SNAPSHOT=1.
 */
import { sql } from 'kysely';
import type { Db } from './store.ts';

export async function dumpSchema(db: Db): Promise<string> {
  const cols = await sql<{ table_name: string; column_name: string; data_type: string; is_nullable: string; column_default: string | null }>`
    SELECT table_name, column_name, data_type, is_nullable, column_default
    FROM information_schema.columns WHERE table_schema = current_schema()
    ORDER BY table_name, ordinal_position`.execute(db);
  const cons = await sql<{ table_name: string; name: string; def: string }>`
    SELECT c.relname AS table_name, con.conname AS name, pg_get_constraintdef(con.oid) AS def
    FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = current_schema() AND con.contype <> 'n' ORDER BY c.relname, con.conname`.execute(db);
  const idx = await sql<{ tablename: string; indexname: string; indexdef: string }>`
    SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema()
    ORDER BY tablename, indexname`.execute(db);
  const trig = await sql<{ table_name: string; def: string }>`
    SELECT c.relname AS table_name, pg_get_triggerdef(t.oid) AS def
    FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = current_schema() AND NOT t.tgisinternal ORDER BY c.relname, t.tgname`.execute(db);
  const tables = [...new Set(cols.rows.map((c) => c.table_name))].sort();
  const out: string[] = [
    '-- kiln database schema, generated from src/store/migrations by src/store/schema-snapshot.ts.',
    '-- Do not edit. After adding a migration: KILN_UPDATE_SCHEMA_SNAPSHOT=1 node scripts/test.mjs schema-snapshot',
    '',
  ];
  for (const t of tables) {
    out.push(`TABLE ${t}`);
    for (const c of cols.rows.filter((x) => x.table_name === t)) {
      const def = c.column_default === null ? '' : ` DEFAULT ${c.column_default}`;
      out.push(`  ${c.column_name} ${c.data_type}${c.is_nullable === 'NO' ? ' NOT NULL' : ''}${def}`);
    }
    for (const c of cons.rows.filter((x) => x.table_name === t)) out.push(`  CONSTRAINT ${c.name} ${c.def}`);
    for (const i of idx.rows.filter((x) => x.tablename === t)) out.push(`  ${i.indexdef.replace(/ ON [\w."]+\./, ' ON ')}`);
    for (const g of trig.rows.filter((x) => x.table_name === t)) out.push(`  ${g.def.replace(/ ON [\w."]+\./, ' ON ')}`);
    out.push('');
  }
  return out.join('\n');
}
