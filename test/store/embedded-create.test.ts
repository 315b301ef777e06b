// Creating the embedded store: initdb runs in a child process into a sibling directory renamed into
// place, so an interrupted creation leaves no half-made database; leftovers of dead creators are removed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sql } from 'kysely';
import { migrate, openStore } from '../../src/store/store.ts';

test('a new embedded store is created whole, reopened with its data, and interrupted creations are swept', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'kiln-embedded-'));
  try {
    mkdirSync(join(dir, '.db.init-999999999', 'base'), { recursive: true }); // a creator that died
    const s = await openStore({ dataDir: join(dir, 'db') });
    await migrate(s.db);
    await sql`INSERT INTO tenants (name) VALUES ('kept')`.execute(s.db);
    await s.close();
    assert.deepEqual(readdirSync(dir), ['db']);
    assert.ok(existsSync(join(dir, 'db', 'PG_VERSION')));
    const again = await openStore({ dataDir: join(dir, 'db') });
    const r = await sql<{ name: string; sb: string }>`SELECT name, current_setting('shared_buffers') AS sb FROM tenants`.execute(again.db);
    await again.close();
    assert.deepEqual(r.rows, [{ name: 'kept', sb: '16MB' }]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
