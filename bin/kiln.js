#!/usr/bin/env node
// The kiln CLI. The bundle is built by `npm run build` (also run by `npm install`).
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
const bundle = fileURLToPath(new URL('../dist/kiln.mjs', import.meta.url));
if (!existsSync(bundle)) {
  process.stderr.write('kiln: the CLI is not built yet.\nhow to fix: run `npm install` (or `npm run build`) in the kiln checkout.\n');
  process.exit(2);
}
await import(bundle);
