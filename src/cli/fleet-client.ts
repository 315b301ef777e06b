/** The client side of the fleet commands: which server, which token. */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Command } from 'commander';
import { makeApiClient, type ApiClient } from './api-client.ts';
import { loadCommonConfig } from './config.ts';
import { DEFAULT_PORT, loadClientConfig } from './fleet-config.ts';

export interface ClientFlags {
  server?: string;
  ca?: string;
  token?: string;
  config?: string;
  dataDir?: string;
}

export function addClientOptions(cmd: Command): Command {
  return cmd
    .option('--server <url>', `kiln server URL (env KILN_SERVER; default http://127.0.0.1:${DEFAULT_PORT})`)
    .option('--ca <file>', 'a PEM CA certificate to trust for an https:// server, besides the system roots (env KILN_CA)')
    .option('--token <token>', 'API token (env KILN_TOKEN; default: the admin token `kiln up`/`kiln server` wrote to the data directory)')
    .option('--config <file>', 'config file, YAML or JSON (env KILN_CONFIG)')
    .option('--data-dir <dir>', 'kiln data directory (env KILN_DATA_DIR)');
}

export function clientFrom(flags: ClientFlags): ApiClient {
  const common = loadCommonConfig({ ...(flags.dataDir ? { dataDir: flags.dataDir } : {}) });
  const cfg = loadClientConfig(flags, process.env, () => {
    try {
      return readFileSync(join(common.dataDir, 'admin.token'), 'utf8').trim() || undefined;
    } catch {
      return undefined;
    }
  });
  return makeApiClient({ server: cfg.server ?? `http://127.0.0.1:${DEFAULT_PORT}`, token: cfg.token, ...(cfg.ca ? { ca: cfg.ca } : {}) });
}
