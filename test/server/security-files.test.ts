// Defect 4 of issue 17: the data directory and everything in it owner-only; the admin token written
// without following links (docs/security.md, "Files").
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { makePrivateDataDir, tighten } from '../../src/cli/private-dir.ts';
import { writePrivateFile } from '../../src/server/private-file.ts';
import { openStore } from '../../src/store/store.ts';

function walk(dir: string, out: { path: string; mode: number; dir: boolean }[] = []): { path: string; mode: number; dir: boolean }[] {
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    const st = lstatSync(p);
    if (st.isSymbolicLink()) continue;
    out.push({ path: p, mode: st.mode & 0o777, dir: st.isDirectory() });
    if (st.isDirectory()) walk(p, out);
  }
  return out;
}

void test('defect 4: the embedded database, WAL included, and everything else in the data dir are owner-only', async () => {
  const root = mkdtempSync(join(tmpdir(), 'kiln-files-'));
  const umask = process.umask();
  try {
    const data = join(root, 'data');
    // What an older kiln left: world-readable files and directories, an admin token 0644.
    mkdirSync(join(data, 'old'), { recursive: true, mode: 0o755 });
    chmodSync(data, 0o755);
    writeFileSync(join(data, 'admin.token'), 'kiln_api_x\n', { mode: 0o644 });
    writeFileSync(join(data, 'old', 'f'), 'x', { mode: 0o666 });
    chmodSync(join(data, 'old', 'f'), 0o666);
    makePrivateDataDir(data);
    const store = await openStore({ dataDir: join(data, 'db') });
    tighten(data); // as `kiln server` and `kiln up` do once the store is open
    await store.db.insertInto('tenants').values({ name: 'x', max_concurrent: 1 }).execute();
    await store.db.schema.createTable('more').addColumn('x', 'text').execute();
    // Whatever PGlite makes while running sits in directories only the owner may enter.
    assert.deepEqual(walk(data).filter((e) => e.dir && e.mode !== 0o700), []);
    await store.close();
    tighten(data);
    const entries = walk(data);
    assert.ok(entries.filter((e) => !e.dir).length > 50, 'PGlite wrote its files');
    const open = entries.filter((e) => (e.mode & 0o077) !== 0);
    assert.deepEqual(open, [], 'nothing readable by group or others');
    assert.equal(statSync(data).mode & 0o777, 0o700);
  } finally {
    process.umask(umask);
    rmSync(root, { recursive: true, force: true });
  }
});

void test('defect 4: the admin token write does not follow a planted link and replaces a 0644 file with a 0600 one', () => {
  const root = mkdtempSync(join(tmpdir(), 'kiln-files-'));
  try {
    const victim = join(root, 'victim');
    writeFileSync(victim, 'precious\n');
    const token = join(root, 'admin.token');
    symlinkSync(victim, token);
    writePrivateFile(token, 'kiln_api_secret\n');
    assert.equal(readFileSync(victim, 'utf8'), 'precious\n');
    assert.ok(!lstatSync(token).isSymbolicLink());
    assert.equal(lstatSync(token).mode & 0o777, 0o600);
    const other = join(root, 'other.token');
    writeFileSync(other, 'old\n', { mode: 0o644 });
    writePrivateFile(other, 'new\n');
    assert.equal(statSync(other).mode & 0o777, 0o600);
    assert.equal(readFileSync(other, 'utf8'), 'new\n');
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
