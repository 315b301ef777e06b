/**
 * Host power tests: real `kiln agent` processes (memory VM driver) whose "host" sleeps and wakes. The
 * agent's sleep command stops the agent process (SIGSTOP, as a suspend freezes it); the server's wake
 * command continues it (SIGCONT) after a delay, in the background, and appends the host's name to
 * wakes.log so a test counts every wake that was sent. A host whose name starts with "stuck" is never
 * continued: its wake never completes.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnBuiltKiln, type KilnProcess } from '../agent/processes.ts';

export interface PowerWorld {
  dir: string;
  /** The wake command the server runs (sh -c), continuing the agent after `delayS`. */
  wakeCommand(delayS?: number): string;
  /** Names of hosts the server sent a wake to, in order. */
  wakes(): string[];
  spawnAgent(name: string, servers: string[], token: string, o?: { cpus?: number; sleepCommand?: string; wol?: { mac: string; broadcast: string; port: number } }): Promise<KilnProcess>;
  agents: Map<string, KilnProcess>;
  cleanup(): Promise<void>;
}

export function makePowerWorld(): PowerWorld {
  const dir = mkdtempSync(join(tmpdir(), 'kiln-power-'));
  const agents = new Map<string, KilnProcess>();
  const log = join(dir, 'wakes.log');
  return {
    dir,
    agents,
    wakeCommand: (delayS = 0.3) =>
      `echo "$KILN_HOST" >> ${log}; case "$KILN_HOST" in stuck*) exit 0;; esac; (sleep ${delayS}; kill -CONT "$(cat ${dir}/"$KILN_HOST".pid)") >/dev/null 2>&1 &`,
    wakes: () => (existsSync(log) ? readFileSync(log, 'utf8').trim().split('\n').filter(Boolean) : []),
    async spawnAgent(name, servers, token, o = {}) {
      const power = o.wol
        ? { driver: 'wol', sleepCommand: o.sleepCommand ?? 'kill -STOP "$KILN_AGENT_PID"', settle: '0s', mac: o.wol.mac, broadcast: o.wol.broadcast, port: o.wol.port }
        : { driver: 'command', sleepCommand: o.sleepCommand ?? 'kill -STOP "$KILN_AGENT_PID"', settle: '0s' };
      const config = join(dir, `${name}.json`);
      writeFileSync(config, JSON.stringify({ agent: { power } }));
      const p = spawnBuiltKiln(['agent', '--driver', 'memory', '--name', name, '--cpus', String(o.cpus ?? 16), '--memory', '32G', '--config', config, ...servers.flatMap((s) => ['--server', s])], {
        KILN_TOKEN: token,
        KILN_LOG_LEVEL: process.env.KILN_TEST_LOG ?? 'info',
      });
      writeFileSync(join(dir, `${name}.pid`), String(p.proc.pid));
      agents.set(name, p);
      await p.waitForOutput(/connected to the fleet as host/, 180_000);
      return p;
    },
    async cleanup() {
      for (const a of agents.values()) {
        if (a.proc.pid) {
          try {
            process.kill(a.proc.pid, 'SIGCONT');
          } catch {
            /* gone */
          }
        }
        await a.kill('SIGKILL');
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
