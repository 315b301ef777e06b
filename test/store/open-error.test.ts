// The embedded store's open error names its real cause (it used to blame "another kiln process" for all).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openStore } from '../../src/store/store.ts';
import { KilnError } from '../../src/core/errors.ts';

void test('opening a damaged embedded store shows the real cause, not a guess about another process', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'kiln-open-'));
  try {
    const db = join(dir, 'db');
    mkdirSync(db);
    // A damaged database: PGlite's own message is shown, and the hint names the possible causes.
    writeFileSync(join(db, 'PG_VERSION'), '9\n');
    await assert.rejects(openStore({ dataDir: db }), (e: unknown) => {
      assert.ok(e instanceof KilnError);
      assert.match(e.message, /could not open the embedded database in .*: \S/);
      assert.doesNotMatch(e.message, /another kiln process/);
      assert.match(e.hint ?? '', /damaged/);
      return true;
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
