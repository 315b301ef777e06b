/** Bundles src/dashboard into `outdir` (app.js, app.css, index.html). */
export function buildDashboard(outdir: string): Promise<void>;
