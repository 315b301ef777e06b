/**
 * Configuration: the only code that reads process.env. Precedence: flag > env (KILN_*) > file > default.
 * Each process calls one load function once and passes the resolved object down explicitly.
 */
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';

export interface CommonConfig {
  /** Where kiln keeps images, VM directories, the embedded database and caches. */
  dataDir: string;
  logLevel: string;
}

export function defaultDataDir(env: NodeJS.ProcessEnv): string {
  if (env.KILN_DATA_DIR) return resolve(env.KILN_DATA_DIR);
  if (process.getuid?.() === 0) return '/var/lib/kiln';
  return join(env.XDG_DATA_HOME ?? join(homedir(), '.local', 'share'), 'kiln');
}

export function loadCommonConfig(flags: { dataDir?: string; logLevel?: string }, env: NodeJS.ProcessEnv = process.env): CommonConfig {
  return {
    dataDir: flags.dataDir ? resolve(flags.dataDir) : defaultDataDir(env),
    logLevel: flags.logLevel ?? env.KILN_LOG_LEVEL ?? 'info',
  };
}
