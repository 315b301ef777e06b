// Bundles the CLI into dist/kiln.mjs so that `kiln` starts fast (no TypeScript transform at run time).
import { build } from 'esbuild';
import { cpSync, mkdirSync, rmSync } from 'node:fs';
rmSync('dist', { recursive: true, force: true });
await build({
  entryPoints: ['src/cli/main.ts'],
  outdir: 'dist',
  entryNames: 'kiln',
  chunkNames: 'chunks/[name]-[hash]',
  splitting: true,
  outExtension: { '.js': '.mjs' },
  bundle: true,
  platform: 'node',
  target: 'node20',
  format: 'esm',
  packages: 'external',
  sourcemap: 'linked',
  logLevel: 'warning',
});
// Files the guest image build copies verbatim (the guest init and friends).
mkdirSync('dist/guest', { recursive: true });
cpSync('src/image/guest', 'dist/guest', { recursive: true });
// The dashboard's browser bundle (src/dashboard → dist/dashboard), served at / by kiln server and kiln up.
const { buildDashboard } = await import('./build-dashboard.mjs');
await buildDashboard('dist/dashboard');
