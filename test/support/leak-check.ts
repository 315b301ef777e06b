// Run after the whole suite (scripts/test.mjs): fails if any test left a QEMU process, a kiln cgroup or a
// VM directory behind. Each VM test file also checks this in its own after-hook.
import { findLeaks } from './leaks.ts';

const leaks = findLeaks();
if (leaks.length > 0) {
  console.error(`leak check: ${leaks.length} thing(s) left behind by the tests:`);
  for (const l of leaks) console.error(`  ${l}`);
  process.exit(1);
}
console.error('leak check: nothing left behind');
