/** Where the built dashboard is: dist/dashboard beside the bundle (installed), or the repository's dist (from source). */
import { existsSync } from 'node:fs';
import { join } from 'node:path';

export function dashboardDir(): string | undefined {
  const here = import.meta.dirname;
  const candidates = [join(here, 'dashboard'), join(here, '..', 'dashboard'), join(here, '..', '..', 'dist', 'dashboard')];
  // a built directory has the bundle beside the page (src/dashboard has the page's template only)
  return candidates.find((d) => existsSync(join(d, 'index.html')) && existsSync(join(d, 'app.js')) && existsSync(join(d, 'app.css')));
}
