/**
 * `kiln up`: the server and one local agent in one process, on the embedded store. `startUp` is also what
 * `kiln run` uses when KILN_SERVER is not set, so both paths go through the same API and scheduler.
 */
import type { CacheStore } from '../vm/cache-store.ts';
import { makePrivateDataDir, tighten } from './private-dir.ts';
import { join } from 'node:path';
import { hostname } from 'node:os';
import type { Command } from 'commander';
import type { Logger } from 'pino';
import { makeAgent, type Agent } from '../agent/agent.ts';
import type { ImageResolver } from '../agent/images.ts';
import type { RegistryMirror } from '../agent/mirror.ts';
import { dashboardDir } from './dashboard-dir.ts';
import { makeServer, type KilnServer, type MakeServerOptions } from '../server/server.ts';
import { openStore } from '../store/store.ts';
import { createToken, makeSecret, revokeToken } from '../store/tokens.ts';
import type { VmDriver } from '../vm/driver.ts';
import { loadServerConfig, redact, type ServerFlags } from './fleet-config.ts';
import { makeDriverFor, makeLogger, makeMirrorsFor } from './fleet-wiring.ts';
import type { Output } from './output.ts';

export interface UpOptions {
  /** Directory for the embedded store; undefined keeps the store in memory (gone when the process ends). */
  storeDir?: string;
  /** A PostgreSQL URL instead of the embedded store. */
  databaseUrl?: string;
  host?: string;
  /** 0 (default) picks a free port. */
  port?: number;
  driver: VmDriver;
  images: ImageResolver;
  logger: Logger;
  agentName?: string;
  labels?: string[];
  /** Per-job stored log cap (default 16 MiB; `kiln run` passes a large one: it streams, the store is a copy). */
  logLimitBytes?: number;
  /** Where to write the admin token on first start (kiln up); in-process runs keep it in memory. */
  bootstrapTokenFile?: string;
  adminToken?: string;
  github?: MakeServerOptions['github'];
  /** The local host's registry mirrors (one per registry), supervised by the local agent. */
  mirrors?: RegistryMirror[];
  mirrorStatusIntervalMs?: number;
  /** Where the local agent spills unacknowledged job output past its memory limit. */
  outputSpillDir?: string;
  /** Test-only: see ServerConfig.testHoldStarts. */
  testHoldStarts?: boolean;
  /** Where the local agent keeps its host credential (the data directory); unset: in memory. */
  credentialDir?: string;
  /** Request bodies' deadline and budget (server/http/body-intake.ts). */
  bodyIntake?: MakeServerOptions['bodyIntake'];
  /** kiln's own TLS; `ca` is what the local agent trusts (default: the certificate itself). */
  tls?: { cert: Buffer; key: Buffer; ca?: Buffer };
  /** The data directory: the local agent's warm-start planner keeps its usage counts there (see AgentOptions.dataDir). */
  dataDir?: string;
  /** The local host's warm caches (docs/caches.md). */
  caches?: CacheStore;
}

export interface UpHandle {
  /** Base URL of the API (http://127.0.0.1:PORT). */
  url: string;
  /** An admin token for this server (in memory; valid while it runs). */
  token: string;
  server: KilnServer;
  agent: Agent;
  close(): Promise<void>;
}

export async function startUp(o: UpOptions): Promise<UpHandle> {
  const store = await openStore({ ...(o.databaseUrl ? { databaseUrl: o.databaseUrl } : {}), ...(o.storeDir ? { dataDir: o.storeDir } : {}) });
  let server: KilnServer | undefined;
  let agent: Agent | undefined;
  try {
    server = await makeServer({
      store,
      logger: o.logger,
      ...(o.adminToken ? { adminToken: o.adminToken } : {}),
      ...(o.bootstrapTokenFile ? { bootstrapTokenFile: o.bootstrapTokenFile } : {}),
      options: { ...(o.logLimitBytes ? { logLimitBytes: o.logLimitBytes } : {}), ...(o.testHoldStarts ? { testHoldStarts: true } : {}), pollMs: 500 },
      ...(o.github ? { github: o.github } : {}),
      ...(o.bodyIntake ? { bodyIntake: o.bodyIntake } : {}),
      ...(o.tls ? { tls: { cert: o.tls.cert, key: o.tls.key } } : {}),
      ...(dashboardDir() ? { dashboardDir: dashboardDir()! } : {}),
    });
    // The first-start token (if any) is written before this one exists; this one is for the caller.
    const callerToken = o.adminToken ? undefined : await createToken(store.db, { name: 'kiln up (in-process caller)', role: 'admin', secret: makeSecret('admin') });
    const adminToken = o.adminToken ?? callerToken!.secret;
    const url = await server.listen({ host: o.host ?? '127.0.0.1', port: o.port ?? 0 });
    const { secret: agentToken } = await createToken(store.db, { name: 'local agent (kiln up)', role: 'agent' });
    agent = makeAgent({
      servers: [url],
      token: agentToken,
      name: o.agentName ?? hostname().replace(/[^A-Za-z0-9._-]/g, '-').slice(0, 100),
      ...(o.labels ? { labels: o.labels } : {}),
      driver: o.driver,
      images: o.images,
      logger: o.logger,
      ...(o.mirrors?.length ? { mirrors: o.mirrors } : {}),
      ...(o.mirrorStatusIntervalMs ? { statusIntervalMs: o.mirrorStatusIntervalMs } : {}),
      ...(o.outputSpillDir ? { outputSpillDir: o.outputSpillDir } : {}),
      ...(o.credentialDir ? { credentialDir: o.credentialDir } : {}),
      ...(o.tls ? { ca: o.tls.ca ?? o.tls.cert } : {}),
      ...(o.dataDir ? { dataDir: o.dataDir } : {}),
      ...(o.caches ? { caches: o.caches } : {}),
    });
    const connected = agent.connected(30_000);
    await agent.start();
    await connected;
    const s = server;
    const a = agent;
    let closing: Promise<void> | undefined;
    return {
      url,
      token: adminToken,
      server: s,
      agent: a,
      close: () =>
        (closing ??= (async () => {
          await a.stop();
          await s.close();
          // The caller's token lived in memory only; do not leave it valid in a persistent store.
          if (callerToken) await revokeToken(store.db, callerToken.token.id).catch(() => undefined);
          await store.close();
        })()),
    };
  } catch (e) {
    await agent?.stop().catch(() => {});
    await server?.close().catch(() => {});
    await store.close().catch(() => {});
    throw e;
  }
}

const collect = (v: string, acc: string[] = []) => [...acc, v];

export function registerUp(program: Command, out: () => Output): void {
  program
    .command('up')
    .description('run the server and one local agent in one process, on the embedded store (the quickest start)')
    .option('--listen <host:port>', 'where the API listens (default 127.0.0.1:7370; env KILN_LISTEN)')
    .option('--data-dir <dir>', 'kiln data directory (env KILN_DATA_DIR)')
    .option('--config <file>', 'config file, YAML or JSON (env KILN_CONFIG)')
    .option('--driver <kind>', 'VM driver: qemu (default) or memory (simulated, for trying the fleet without VMs)', 'qemu')
    .option('--label <label...>', 'labels this host offers (pools)')
    .option('--tls-cert <file>', 'serve https/wss with this PEM certificate (env KILN_TLS_CERT); it must name the --listen address')
    .option('--tls-key <file>', 'the PEM private key of --tls-cert (env KILN_TLS_KEY)')
    .option('--ca <file>', "the CA the local agent trusts for --tls-cert (env KILN_CA; default: the certificate itself)")
    .option(
      '--mirror-upstream <[registry=]url>',
      'run a registry mirror of this upstream for the local VMs: a URL for Docker Hub, REGISTRY=URL (ghcr.io=https://ghcr.io) for another registry; repeatable (env KILN_MIRROR_UPSTREAM, comma-separated; credentials for the first from KILN_MIRROR_USERNAME/KILN_MIRROR_PASSWORD)',
      collect,
    )
    .option('--mirror-listen <host:port>', 'where the first mirror listens (default 127.0.0.1:5000; the others on the next ports; env KILN_MIRROR_LISTEN)')
    .option('--log-level <level>', 'log level (env KILN_LOG_LEVEL)')
    .action(async (flags: ServerFlags & { driver: string; label?: string[] }) => {
      const o = out();
      const cfg = loadServerConfig(flags);
      const logger = makeLogger(cfg.logLevel);
      logger.info({ config: redact(cfg) }, 'kiln up starting');
      makePrivateDataDir(cfg.dataDir);
      const { driver, images, caches } = makeDriverFor(flags.driver === 'memory' ? 'memory' : 'qemu', cfg.dataDir, logger);
      const tokenFile = join(cfg.dataDir, 'admin.token');
      const up = await startUp({
        ...(cfg.databaseUrl ? { databaseUrl: cfg.databaseUrl } : { storeDir: join(cfg.dataDir, 'db') }),
        host: cfg.listen.host,
        port: cfg.listen.port,
        driver,
        images,
        ...(caches ? { caches } : {}),
        logger,
        logLimitBytes: cfg.logLimitBytes,
        bootstrapTokenFile: tokenFile,
        outputSpillDir: join(cfg.dataDir, 'output'),
        ...(cfg.testHoldStarts ? { testHoldStarts: true } : {}),
        credentialDir: cfg.dataDir,
        dataDir: cfg.dataDir,
        ...(cfg.adminToken ? { adminToken: cfg.adminToken } : {}),
        ...(flags.label ? { labels: flags.label } : {}),
        ...(cfg.github ? { github: { config: cfg.github } } : {}),
        bodyIntake: { timeoutMs: cfg.bodyTimeoutMs, largeBudget: cfg.bodyBudgetBytes },
        ...(cfg.tls ? { tls: { cert: cfg.tls.cert, key: cfg.tls.key, ...(cfg.ca ? { ca: cfg.ca } : {}) } } : {}),
        ...(cfg.mirror ? { mirrors: makeMirrorsFor(cfg.mirror, cfg.dataDir, logger), mirrorStatusIntervalMs: cfg.mirror.statusIntervalMs } : {}),
      });
      tighten(cfg.dataDir);
      o.info(`kiln is up at ${up.url} with one local agent (${driver.name} driver)`);
      if (up.server.bootstrapSecret) o.info(`first start: an admin token was written to ${tokenFile} (the CLI reads it from there)`);
      o.info(`try: kiln jobs ls   (Ctrl-C stops the server and the agent)`);
      await waitForSignal();
      o.info('stopping');
      await up.close();
    });
}

export function waitForSignal(): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    const on = (s: NodeJS.Signals) => {
      process.off('SIGINT', on);
      process.off('SIGTERM', on);
      resolve(s);
    };
    process.on('SIGINT', on);
    process.on('SIGTERM', on);
  });
}
