// Runs every test file (unit tests beside the code in src/, integration tests in test/) with Node's test
// runner through tsx, then fails the run if anything a test started was left behind.
//   node scripts/test.mjs                  every test file
//   node scripts/test.mjs --unit           only the unit tests beside the code in src/ (npm run test:unit)
//   node scripts/test.mjs github server/x  only files whose path contains one of the words
// (Node 20's --test does not expand a quoted glob itself, so the files are found here.)
import { spawnSync } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';

function walk(dir, out = []) {
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) walk(p, out);
    else if (name.endsWith('.test.ts')) out.push(p);
  }
  return out;
}

const args = process.argv.slice(2);
const unit = args.includes('--unit');
const filter = args.filter((a) => a !== '--unit');
let files = (unit ? walk('src') : [...walk('src'), ...walk('test')]).sort();
if (filter.length > 0) files = files.filter((f) => filter.some((x) => f.includes(x)));
const concurrency = process.env.KILN_TEST_CONCURRENCY ?? '2';
const r = spawnSync(
  process.execPath,
  ['--import', 'tsx', '--test', `--test-concurrency=${concurrency}`, '--test-reporter=spec', ...files],
  { stdio: 'inherit' },
);
const leak = spawnSync(process.execPath, ['--import', 'tsx', 'test/support/leak-check.ts'], { stdio: 'inherit' });
process.exit(r.status !== 0 ? (r.status ?? 1) : (leak.status ?? 1));
