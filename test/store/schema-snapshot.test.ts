// Fails when the migrations drift from the committed schema snapshot (src/store/schema.sql), on both stores.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { storeKinds, makeTestStore } from './test-stores.ts';
import { dumpSchema } from '../../src/store/schema-snapshot.ts';

const snapshotPath = new URL('../../src/store/schema.sql', import.meta.url);

for (const { kind, skip } of storeKinds()) {
  void test(`schema snapshot matches the migrations (${kind})`, { skip }, async () => {
    const store = await makeTestStore(kind);
    try {
      const dump = await dumpSchema(store.db);
      if (process.env.KILN_UPDATE_SCHEMA_SNAPSHOT === '1' && kind === 'pglite') writeFileSync(snapshotPath, dump);
      const committed = readFileSync(snapshotPath, 'utf8');
      assert.equal(dump, committed, 'migrations and src/store/schema.sql differ: run KILN_UPDATE_SCHEMA_SNAPSHOT=1 node scripts/test.mjs schema-snapshot and commit the file');
    } finally {
      await store.close();
    }
  });
}
