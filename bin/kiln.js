#!/usr/bin/env -S node --v8-pool-size=1
// The kiln CLI. The bundle is built by `npm run build` (also run by `npm install`).
//
// Run as a program (`bin/kiln.js`, or `kiln` after `npm link`), the first line gives node its flags:
// --v8-pool-size=1 keeps V8 to one background thread instead of four. Each of those threads keeps its own
// malloc arena at its peak, so a server with 1,000 agents used 50-100 MB more memory with four, and no
// less CPU (bench/scheduler.bench.ts). `node bin/kiln.js` works the same, without the flags.
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
const bundle = fileURLToPath(new URL('../dist/kiln.mjs', import.meta.url));
if (!existsSync(bundle)) {
  process.stderr.write('kiln: the CLI is not built yet.\nhow to fix: run `npm install` (or `npm run build`) in the kiln checkout.\n');
  process.exit(2);
}
await import(bundle);
