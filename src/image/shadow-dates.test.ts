import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fixShadowDates } from './build-ci.ts';

test('the shadow file\'s change dates become the build epoch\'s day; other fields, the mode and empty dates stay', () => {
  const root = mkdtempSync(join(tmpdir(), 'kiln-shadow-'));
  try {
    mkdirSync(join(root, 'etc'));
    const file = join(root, 'etc', 'shadow');
    writeFileSync(file, 'root:*:20793:0:99999:7:::\n_apt:*:20794:0:99999:7:::\nnochange:!::0:99999:7:::\n', { mode: 0o640 });
    const epoch = 1_700_000_000; // 2023-11-14: day 19675
    fixShadowDates(root, epoch);
    assert.equal(readFileSync(file, 'utf8'), 'root:*:19675:0:99999:7:::\n_apt:*:19675:0:99999:7:::\nnochange:!::0:99999:7:::\n');
    assert.equal(statSync(file).mode & 0o777, 0o640);
    // Two builds on different days end up with the same bytes.
    writeFileSync(file, 'root:*:20800:0:99999:7:::\n_apt:*:20801:0:99999:7:::\nnochange:!::0:99999:7:::\n');
    fixShadowDates(root, epoch);
    assert.equal(readFileSync(file, 'utf8'), 'root:*:19675:0:99999:7:::\n_apt:*:19675:0:99999:7:::\nnochange:!::0:99999:7:::\n');
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
