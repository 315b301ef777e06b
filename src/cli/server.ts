/** `kiln server`: one control-plane replica (embedded store by default, PostgreSQL with KILN_DATABASE_URL). */
import { makePrivateDataDir, tighten } from './private-dir.ts';
import { join } from 'node:path';
import type { Command } from 'commander';
import { dashboardDir } from './dashboard-dir.ts';
import { makeServer } from '../server/server.ts';
import { openStore } from '../store/store.ts';
import { loadServerConfig, redact, type ServerFlags } from './fleet-config.ts';
import { makeLogger } from './fleet-wiring.ts';
import type { Output } from './output.ts';
import { waitForSignal } from './up.ts';

export function registerServer(program: Command, out: () => Output): void {
  program
    .command('server')
    .description('run a kiln control-plane server (API, agent endpoint, scheduler); several may share one PostgreSQL')
    .option('--listen <host:port>', 'where the API listens (default 127.0.0.1:7370; env KILN_LISTEN)')
    .option('--database-url <url>', 'postgres://… to use a PostgreSQL server (env KILN_DATABASE_URL); default: embedded store in the data directory')
    .option('--tls-cert <file>', "serve https/wss with this PEM certificate (chain) (env KILN_TLS_CERT); needs --tls-key")
    .option('--tls-key <file>', 'the PEM private key of --tls-cert (env KILN_TLS_KEY)')
    .option('--log-limit <size>', 'largest stored log per job (default 16M; env KILN_LOG_LIMIT)')
    .option('--data-dir <dir>', 'kiln data directory (env KILN_DATA_DIR)')
    .option('--config <file>', 'config file, YAML or JSON (env KILN_CONFIG)')
    .option('--log-level <level>', 'log level (env KILN_LOG_LEVEL)')
    .action(async (flags: ServerFlags) => {
      const o = out();
      const cfg = loadServerConfig(flags);
      const logger = makeLogger(cfg.logLevel);
      logger.info({ config: redact(cfg) }, 'kiln server starting');
      makePrivateDataDir(cfg.dataDir);
      const store = await openStore(cfg.databaseUrl ? { databaseUrl: cfg.databaseUrl, poolSize: 20 } : { dataDir: join(cfg.dataDir, 'db') });
      tighten(cfg.dataDir);
      const tokenFile = join(cfg.dataDir, 'admin.token');
      const server = await makeServer({
        store,
        logger,
        options: { logLimitBytes: cfg.logLimitBytes, hostLostAfterMs: cfg.hostLostAfterMs, ...(cfg.testHoldStarts ? { testHoldStarts: true } : {}) },
        bootstrapTokenFile: tokenFile,
        ...(dashboardDir() ? { dashboardDir: dashboardDir()! } : {}),
        ...(cfg.adminToken ? { adminToken: cfg.adminToken } : {}),
        ...(cfg.metricsToken ? { metricsToken: cfg.metricsToken } : {}),
        ...(cfg.github ? { github: { config: cfg.github } } : {}),
        power: cfg.power,
        bodyIntake: { timeoutMs: cfg.bodyTimeoutMs, largeBudget: cfg.bodyBudgetBytes },
        ...(cfg.tls ? { tls: { cert: cfg.tls.cert, key: cfg.tls.key } } : {}),
      });
      const url = await server.listen(cfg.listen);
      o.info(`kiln server ${server.serverId} listening at ${url} (${store.kind === 'pglite' ? `embedded store in ${join(cfg.dataDir, 'db')}` : 'PostgreSQL'})`);
      if (server.bootstrapSecret) o.info(`first start: an admin token was written to ${tokenFile}; make agent tokens with \`kiln tokens create --role agent\``);
      const sig = await waitForSignal();
      o.info(`${sig}: stopping`);
      await server.close();
      await store.close();
    });
}
