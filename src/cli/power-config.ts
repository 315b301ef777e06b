/**
 * Power configuration (docs/power.md): the server's `power:` section (sleep policy per pool, how hosts are
 * woken) and the agent's `agent.power:` section (its driver and sleep command). Problems are collected,
 * not thrown one at a time, like the rest of the config.
 */
import { parseArch } from '../core/arch.ts';
import { parseDuration } from '../core/sizes.ts';
import { assertTimeZone, DEFAULT_POWER_POLICY, parseClock, parseDays, POWER_DRIVERS, type PowerPool, type PowerPolicy, type PowerSchedule } from '../core/power.ts';
import type { AgentPowerOptions } from '../agent/power.ts';
import { powerOptionProblems } from '../agent/power.ts';
import type { PowerOptions } from '../server/power/manager.ts';

type Env = NodeJS.ProcessEnv;

export interface PowerScheduleFile {
  days?: string;
  from?: string;
  to?: string;
  timeZone?: string;
  minAwake?: number | 'all';
}

export interface PowerPoolFile {
  name?: string;
  arch?: string;
  labels?: string[];
  sleepAfter?: string;
  minAwake?: number;
  schedules?: PowerScheduleFile[];
}

export interface PowerFileConfig {
  wakeCommand?: string;
  statusCommand?: string;
  commandTimeout?: string;
  wakeTimeout?: string;
  wakeAttempts?: number;
  retryBackoff?: string;
  maxRetryBackoff?: string;
  markFor?: string;
  tick?: string;
  pools?: PowerPoolFile[];
}

export interface AgentPowerFileConfig {
  driver?: string;
  sleepCommand?: string;
  settle?: string;
  commandTimeout?: string;
  mac?: string;
  interface?: string;
  broadcast?: string;
  port?: number;
}

const first = <T>(...xs: (T | undefined | '')[]): T | undefined => xs.find((x): x is T => x !== undefined && x !== '');

function dur(text: string | undefined, what: string, fallback: number, problems: string[]): number {
  if (text === undefined) return fallback;
  if (/^0+(ms|s|m|h)?$/.test(String(text).trim())) return 0;
  try {
    return parseDuration(String(text), what);
  } catch (e) {
    problems.push((e as Error).message);
    return fallback;
  }
}

function schedule(s: PowerScheduleFile, where: string, problems: string[]): PowerSchedule | undefined {
  try {
    if (!s.days || !s.from || !s.to) throw new Error(`${where} needs days, from and to (e.g. days: mon-fri, from: "08:00", to: "19:00")`);
    const timeZone = s.timeZone ?? 'UTC';
    assertTimeZone(timeZone);
    const minAwake = s.minAwake === undefined || s.minAwake === 'all' ? Infinity : s.minAwake;
    if (!(minAwake === Infinity || (Number.isInteger(minAwake) && minAwake >= 0))) throw new Error(`${where}: minAwake must be a whole number or "all"`);
    return { days: parseDays(s.days), fromMin: parseClock(s.from), toMin: parseClock(s.to), timeZone, minAwake };
  } catch (e) {
    problems.push(`${(e as Error).message.startsWith(where) ? '' : `${where}: `}${(e as Error).message}`);
    return undefined;
  }
}

/** The server's power options from its config file and environment; problems are appended. */
export function loadPowerOptions(file: PowerFileConfig | undefined, env: Env, problems: string[]): PowerOptions {
  const f = file ?? {};
  const pools: PowerPool[] = [];
  for (const [i, p] of (f.pools ?? []).entries()) {
    const where = `power.pools[${i}]`;
    let arch;
    if (p.arch !== undefined) {
      try {
        arch = parseArch(p.arch);
      } catch (e) {
        problems.push(`${where}: ${(e as Error).message}`);
      }
    }
    const minAwake = p.minAwake ?? 0;
    if (!Number.isInteger(minAwake) || minAwake < 0) problems.push(`${where}: minAwake must be a whole number`);
    pools.push({
      name: p.name ?? `pool-${i + 1}`,
      match: { ...(arch ? { arch } : {}), ...(p.labels ? { labels: p.labels } : {}) },
      idleAfterMs: p.sleepAfter === undefined ? undefined : dur(p.sleepAfter, `${where}.sleepAfter`, 30 * 60_000, problems),
      minAwake,
      schedules: (p.schedules ?? []).flatMap((s, j) => schedule(s, `${where}.schedules[${j}]`, problems) ?? []),
    });
  }
  const wakeAttempts = f.wakeAttempts ?? DEFAULT_POWER_POLICY.wakeAttempts;
  if (!Number.isInteger(wakeAttempts) || wakeAttempts < 1) problems.push('power.wakeAttempts must be a whole number of at least 1');
  const policy: PowerPolicy = {
    pools,
    wakeTimeoutMs: dur(f.wakeTimeout, 'power.wakeTimeout', DEFAULT_POWER_POLICY.wakeTimeoutMs, problems),
    wakeAttempts,
    backoffMs: dur(f.retryBackoff, 'power.retryBackoff', DEFAULT_POWER_POLICY.backoffMs, problems),
    maxBackoffMs: dur(f.maxRetryBackoff, 'power.maxRetryBackoff', DEFAULT_POWER_POLICY.maxBackoffMs, problems),
    markedForMs: dur(f.markFor, 'power.markFor', DEFAULT_POWER_POLICY.markedForMs, problems),
  };
  const wakeCommand = first(env.KILN_POWER_WAKE_COMMAND, f.wakeCommand);
  const statusCommand = first(env.KILN_POWER_STATUS_COMMAND, f.statusCommand);
  return {
    policy,
    tickMs: dur(f.tick, 'power.tick', 1000, problems),
    commandTimeoutMs: dur(f.commandTimeout, 'power.commandTimeout', 60_000, problems),
    ...(wakeCommand ? { wakeCommand } : {}),
    ...(statusCommand ? { statusCommand } : {}),
  };
}

/** The agent's power driver from flags, environment and its config file; undefined: none. */
export function loadAgentPower(
  flags: { powerDriver?: string; powerSleepCommand?: string },
  env: Env,
  file: AgentPowerFileConfig | undefined,
  problems: string[],
): AgentPowerOptions | undefined {
  const f = file ?? {};
  const driver = first(flags.powerDriver, env.KILN_POWER_DRIVER, f.driver) ?? 'none';
  if (!(POWER_DRIVERS as readonly string[]).includes(driver)) {
    problems.push(`power driver "${driver}" is not one of ${POWER_DRIVERS.join(', ')}`);
    return undefined;
  }
  if (driver === 'none') return undefined;
  const sleepCommand = first(flags.powerSleepCommand, env.KILN_POWER_SLEEP_COMMAND, f.sleepCommand);
  const o: AgentPowerOptions = {
    driver: driver as AgentPowerOptions['driver'],
    ...(sleepCommand ? { sleepCommand } : {}),
    settleMs: dur(f.settle, 'power.settle', 10_000, problems),
    commandTimeoutMs: dur(f.commandTimeout, 'power.commandTimeout', 10 * 60_000, problems),
    ...(f.mac ? { mac: f.mac } : {}),
    ...(f.interface ? { interface: f.interface } : {}),
    ...(f.broadcast ? { broadcast: f.broadcast } : {}),
    ...(f.port !== undefined ? { port: f.port } : {}),
  };
  problems.push(...powerOptionProblems(o));
  return o;
}
