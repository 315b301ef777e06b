/** `kiln agent --server URL --token T`: one per host. */
import { join } from 'node:path';
import { mkdirSync } from 'node:fs';
import { makePrivateDataDir } from './private-dir.ts';
import type { Command } from 'commander';
import { KilnError } from '../core/errors.ts';
import { makeAgent } from '../agent/agent.ts';
import { loadAgentConfig, redact, type AgentFlags } from './fleet-config.ts';
import { loadCacheTransferConfig } from './config.ts';
import { makeDriverFor, makeLogger, makeMirrorsFor } from './fleet-wiring.ts';
import type { Output } from './output.ts';
import { waitForSignal } from './up.ts';

const collect = (v: string, acc: string[] = []) => [...acc, v];

export function registerAgent(program: Command, out: () => Output): void {
  program
    .command('agent')
    .description('run the host agent: dials the server, reports capacity, runs VMs on command')
    .option('--server <url>', 'server URL; repeat (or comma-separate) to list replicas (env KILN_SERVER)', collect)
    .option('--ca <file>', 'a PEM CA certificate to trust for an https:// server, besides the system roots (env KILN_CA)')
    .option('--token <token>', 'join token from `kiln tokens create --role agent` (env KILN_TOKEN)')
    .option('--name <name>', 'host name in the fleet (default: the machine hostname; env KILN_AGENT_NAME)')
    .option('--label <label>', 'a label this host offers, for jobs that ask for it; repeatable (env KILN_AGENT_LABELS)', collect)
    .option('--arch <arch>', 'architecture to offer (default: the host’s own)')
    .option('--cpus <n>', 'vCPUs to offer (default: all)')
    .option('--memory <size>', 'memory to offer (default: all)')
    .option('--disk <size>', 'disk to offer (default: free space)')
    .option('--driver <kind>', 'VM driver: qemu (default) or memory (simulated; tests and demos)')
    .option('--sim-boot-ms <ms>', 'memory driver only: simulated boot time per VM')
    .option(
      '--mirror-upstream <[registry=]url>',
      'run a registry mirror of this upstream for this host’s VMs, e.g. https://registry-1.docker.io (Docker Hub), or ghcr.io=https://ghcr.io for another registry; repeatable, one mirror per registry (env KILN_MIRROR_UPSTREAM, comma-separated; credentials for the first from KILN_MIRROR_USERNAME/KILN_MIRROR_PASSWORD)',
      collect,
    )
    .option('--mirror-listen <host:port>', `where the first mirror listens on the host (default 127.0.0.1:5000; the others on the next ports; env KILN_MIRROR_LISTEN)`)
    .option('--power-driver <kind>', 'how this host sleeps and wakes: none (default), command or wol (env KILN_POWER_DRIVER; docs/power.md)')
    .option('--power-sleep-command <cmd>', 'run through sh -c to put the host to sleep, e.g. "systemctl suspend" (env KILN_POWER_SLEEP_COMMAND)')
    .option('--data-dir <dir>', 'kiln data directory (env KILN_DATA_DIR)')
    .option('--config <file>', 'config file, YAML or JSON (env KILN_CONFIG)')
    .option('--log-level <level>', 'log level (env KILN_LOG_LEVEL)')
    .action(async (flags: AgentFlags & { simBootMs?: string }) => {
      const o = out();
      const cfg = loadAgentConfig(flags);
      const logger = makeLogger(cfg.logLevel);
      logger.info({ config: redact(cfg) }, 'kiln agent starting');
      makePrivateDataDir(cfg.dataDir);
      const { driver, images, caches } = makeDriverFor(cfg.driver, cfg.dataDir, logger, flags.simBootMs ? { bootMs: Number(flags.simBootMs) } : {});
      const mirrors = makeMirrorsFor(cfg.mirror, cfg.dataDir, logger);
      const agent = makeAgent({
        servers: cfg.servers,
        token: cfg.token,
        ...(cfg.name ? { name: cfg.name } : {}),
        labels: cfg.labels,
        ...(cfg.arch ? { arch: cfg.arch } : {}),
        ...(cfg.cpus ? { cpus: cfg.cpus } : {}),
        ...(cfg.memoryBytes ? { memoryBytes: cfg.memoryBytes } : {}),
        ...(cfg.diskBytes ? { diskBytes: cfg.diskBytes } : {}),
        driver,
        images,
        ...(caches ? { caches } : {}),
        cacheTransfer: loadCacheTransferConfig(),
        logger,
        outputSpillDir: join(cfg.dataDir, 'output'),
        credentialDir: cfg.dataDir,
        dataDir: cfg.dataDir,
        ...(mirrors.length > 0 ? { mirrors, statusIntervalMs: cfg.mirror!.statusIntervalMs } : {}),
        ...(cfg.power ? { power: cfg.power } : {}),
        ...(cfg.ca ? { ca: cfg.ca } : {}),
      });
      let everConnected = false;
      const rejected = new Promise<KilnError>((resolve) =>
        agent.events.once('rejected', (r) => {
          if (!everConnected) resolve(new KilnError(r.code, `the server refused this agent: ${r.message}`, { hint: 'check --token: it must be an agent token from `kiln tokens create --role agent`' }));
        }),
      );
      agent.events.on('connected', (c) => {
        if (!everConnected) o.info(`connected to the fleet as host ${c.hostId} (server ${c.serverId})`);
        everConnected = true;
      });
      await agent.start();
      const first = await Promise.race([rejected, waitForSignal()]);
      if (first instanceof KilnError) {
        await agent.stop();
        throw first;
      }
      o.info(`${first}: stopping the agent and its VMs`);
      await agent.stop();
    });
}
