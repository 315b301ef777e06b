import { test } from 'node:test';
import assert from 'node:assert/strict';
import { csvCell, topSeries } from './routes.ts';

test('CSV cells: quoted when needed, never a spreadsheet formula', () => {
  assert.equal(csvCell('plain'), 'plain');
  assert.equal(csvCell('a,b'), '"a,b"');
  assert.equal(csvCell('say "hi"'), '"say ""hi"""');
  assert.equal(csvCell('=HYPERLINK("x")'), `"'=HYPERLINK(""x"")"`);
  assert.equal(csvCell(['kiln', 'kiln-arm64']), 'kiln kiln-arm64');
  assert.equal(csvCell(null), '');
  assert.equal(csvCell(new Date('2026-01-01T00:00:00Z')), '2026-01-01T00:00:00.000Z');
});

test('usage series keep the 8 biggest keys and sum the rest into (other); label keys read as sets', () => {
  const b = new Date('2026-01-01T00:00:00Z');
  const pts = Array.from({ length: 10 }, (_, i) => ({ bucket: b, key: `repo-${i}`, jobs: 10 - i, failed: 0, vmMinutes: 1, waitSeconds: 2 }));
  const out = topSeries(pts, 'repository');
  assert.equal(out.length, 9);
  const other = out.find((p) => p.key === '(other)')!;
  assert.deepEqual([other.jobs, other.vmMinutes, other.waitSeconds], [2 + 1, 2, 4]);
  assert.equal(out.reduce((a, p) => a + p.jobs, 0), 55);
  const labels = topSeries([{ bucket: b, key: '["kiln-arm64", "kiln"]', jobs: 1, failed: 0, vmMinutes: 0, waitSeconds: 0 }], 'label');
  assert.equal(labels[0]?.key, 'kiln,kiln-arm64');
});
