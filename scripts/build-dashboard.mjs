// Bundles the dashboard's browser code (src/dashboard) into OUTDIR: app.js, app.css (uPlot's CSS
// included) and index.html. No CDN: everything the page loads is served by kiln itself.
import { build } from 'esbuild';
import { copyFileSync, mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';

const src = resolve(import.meta.dirname, '..', 'src', 'dashboard');

export async function buildDashboard(outdir) {
  mkdirSync(outdir, { recursive: true });
  await build({
    entryPoints: { app: join(src, 'main.ts'), 'app-style': join(src, 'app.css') },
    outdir,
    entryNames: '[name]',
    bundle: true,
    platform: 'browser',
    target: ['chrome110', 'firefox110', 'safari16'],
    format: 'iife',
    minify: true,
    legalComments: 'eof',
    logLevel: 'warning',
  });
  // esbuild names a CSS entry after its key; the page asks for app.css.
  copyFileSync(join(outdir, 'app-style.css'), join(outdir, 'app.css'));
  copyFileSync(join(src, 'index.html'), join(outdir, 'index.html'));
}

if (process.argv[1] && resolve(process.argv[1]) === resolve(import.meta.filename)) await buildDashboard(process.argv[2] ?? 'dist/dashboard');
