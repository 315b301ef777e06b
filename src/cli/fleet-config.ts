/**
 * Configuration of `kiln server`, `kiln agent`, `kiln up` and the fleet commands. Precedence: flag > env
 * (KILN_*) > file (--config / KILN_CONFIG, YAML or JSON) > default. Every problem is reported at once;
 * `redact` gives the copy that is logged at start-up (tokens and database passwords hidden).
 * This is config code, so it is allowed to read process.env; nothing else under server/agent does.
 */
import { readFileSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { parseArch, type Arch } from '../core/arch.ts';
import { KilnError } from '../core/errors.ts';
import { parseDuration, parseSize } from '../core/sizes.ts';
import { loadCommonConfig, type CommonConfig } from './config.ts';
import { assertHostPort, assertRegistryName, assertUpstreamUrl, isDockerHub } from '../oci/mirror-config.ts';
import { parseGitHubConfig, type GitHubConfig, type GitHubFileConfig } from '../server/github/config.ts';
import type { PowerOptions } from '../server/power/manager.ts';
import type { AgentPowerOptions } from '../agent/power.ts';
import { loadAgentPower, loadPowerOptions, type AgentPowerFileConfig, type PowerFileConfig } from './power-config.ts';

type Env = NodeJS.ProcessEnv;

export interface FileConfig {
  dataDir?: string;
  logLevel?: string;
  server?: { listen?: string; databaseUrl?: string; adminToken?: string; metricsToken?: string; logLimit?: string | number; hostLostAfter?: string; bodyTimeout?: string; bodyBudget?: string | number; tlsCert?: string; tlsKey?: string };
  agent?: { server?: string | string[]; token?: string; ca?: string; name?: string; labels?: string[]; cpus?: number; memory?: string; disk?: string; driver?: string; arch?: string; mirror?: MirrorFileConfig; power?: AgentPowerFileConfig };
  /** Host power: the server's sleep policy and wake commands (docs/power.md). */
  power?: PowerFileConfig;
  /** `kiln up`'s local agent reads the same section. */
  mirror?: MirrorFileConfig;
  client?: { server?: string; token?: string; ca?: string };
  github?: GitHubFileConfig;
}

export interface MirrorFileConfig {
  /** An upstream URL (Docker Hub's role), or a list of them: `URL` for docker.io, `REGISTRY=URL` for another registry. */
  upstream?: string | string[];
  listen?: string;
  username?: string;
  password?: string;
  statusInterval?: string;
}

/**
 * The per-host registry mirrors; undefined when no upstream is configured (then there is none). The first
 * mirror (Docker Hub's when docker.io is listed) is `registry`/`upstream`/`listen` and gets the credentials;
 * each other registry gets its own mirror in `others`, listening on the next ports.
 */
export interface MirrorConfig {
  registry: string;
  upstream: string;
  listen: string;
  username: string | undefined;
  password: string | undefined;
  others: { registry: string; upstream: string; listen: string }[];
  statusIntervalMs: number;
}

export interface MirrorFlags {
  /** Repeatable: `URL` (docker.io's upstream) or `REGISTRY=URL` (ghcr.io=https://ghcr.io). */
  mirrorUpstream?: string | string[];
  mirrorListen?: string;
}

/** `URL` → docker.io's upstream; `REGISTRY=URL` → that registry's (the name before the first `=` that precedes `://`). */
export function parseMirrorUpstream(entry: string): { registry: string; upstream: string } {
  const m = /^([^=/:]+)=(.+)$/.exec(entry.trim());
  const registry = m ? m[1]!.toLowerCase() : 'docker.io';
  const upstream = m ? m[2]! : entry.trim();
  assertRegistryName(registry);
  assertUpstreamUrl(upstream);
  return { registry: isDockerHub(registry) ? 'docker.io' : registry, upstream };
}

export const DEFAULT_MIRROR_LISTEN = '127.0.0.1:5000';

function loadMirrorConfig(flags: MirrorFlags, env: Env, file: MirrorFileConfig | undefined, p: Problems): MirrorConfig | undefined {
  const listed = first(flags.mirrorUpstream, env.KILN_MIRROR_UPSTREAM?.split(/[\s,]+/).filter(Boolean), file?.upstream);
  const entries = (typeof listed === 'string' ? [listed] : (listed ?? [])).filter((x) => x !== '');
  const upstream = entries[0];
  const listen = first(flags.mirrorListen, env.KILN_MIRROR_LISTEN, file?.listen) ?? DEFAULT_MIRROR_LISTEN;
  const username = first(env.KILN_MIRROR_USERNAME, file?.username);
  const password = first(env.KILN_MIRROR_PASSWORD, file?.password);
  const intervalText = first(env.KILN_MIRROR_STATUS_INTERVAL, file?.statusInterval) ?? '15s';
  const statusIntervalMs = p.try(() => parseDuration(intervalText, 'mirror status interval')) ?? 15_000;
  if (!upstream) {
    if (username || password) p.list.push('mirror credentials are set but no mirror upstream (pass --mirror-upstream URL, or set KILN_MIRROR_UPSTREAM)');
    return undefined;
  }
  const parsed = entries.map((e) => p.try(() => parseMirrorUpstream(e))).filter((x) => x !== undefined);
  // Docker Hub's mirror first: it keeps the listen port (and the guest address 10.0.2.100:5000).
  parsed.sort((a, b) => Number(b.registry === 'docker.io') - Number(a.registry === 'docker.io'));
  const names = parsed.map((x) => x.registry);
  for (const [i, n] of names.entries()) if (names.indexOf(n) !== i) p.list.push(`the mirror upstream of ${n} is given twice (one mirror per registry)`);
  if (parsed.length > 17) p.list.push(`at most 16 mirrors of registries other than docker.io (${parsed.length} upstreams given)`);
  p.try(() => assertHostPort(listen, 'mirror listen address'));
  if (password && !username) p.list.push('KILN_MIRROR_PASSWORD is set without KILN_MIRROR_USERNAME');
  const c = listen.lastIndexOf(':');
  const [host, port] = [listen.slice(0, c), Number(listen.slice(c + 1))];
  if (port + parsed.length - 1 > 65535) p.list.push(`the mirrors listen on ports ${port}-${port + parsed.length - 1}, past 65535`);
  const [head, ...rest] = parsed;
  return {
    registry: head?.registry ?? 'docker.io',
    upstream: head?.upstream ?? upstream,
    listen,
    username,
    password,
    others: rest.map((x, i) => ({ ...x, listen: `${host}:${port + 1 + i}` })),
    statusIntervalMs,
  };
}

export function readConfigFile(path: string | undefined): FileConfig {
  if (!path) return {};
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new KilnError('config.file_unreadable', `cannot read the config file ${path}`, { cause: e, hint: 'check the --config / KILN_CONFIG path' });
  }
  try {
    const v: unknown = path.endsWith('.json') ? JSON.parse(text) : parseYaml(text);
    if (v === null || v === undefined) return {};
    if (typeof v !== 'object' || Array.isArray(v)) throw new Error('not a mapping');
    return v as FileConfig;
  } catch (e) {
    throw new KilnError('config.file_invalid', `the config file ${path} is not valid ${path.endsWith('.json') ? 'JSON' : 'YAML'}: ${(e as Error).message}`);
  }
}

class Problems {
  readonly list: string[] = [];
  try<T>(f: () => T): T | undefined {
    try {
      return f();
    } catch (e) {
      this.list.push(e instanceof Error ? e.message : String(e));
      return undefined;
    }
  }
  throwIfAny(what: string): void {
    if (this.list.length > 0) {
      throw new KilnError('config.invalid', `${what} configuration has ${this.list.length} problem(s): ${this.list.join('; ')}`, {
        hint: 'fix the flags, KILN_* variables or config file entries named above',
      });
    }
  }
}

const first = <T>(...xs: (T | undefined | '')[]): T | undefined => xs.find((x): x is T => x !== undefined && x !== '');

export function parseListen(text: string): { host: string; port: number } {
  const m = /^(?:(\[[^\]]+\]|[^:]*):)?(\d{1,5})$/.exec(text.trim());
  const port = m ? Number(m[2]) : NaN;
  if (!m || port > 65535) throw new KilnError('config.bad_listen', `listen address "${text}" is not HOST:PORT or PORT`);
  return { host: m[1] ? m[1].replace(/^\[|\]$/g, '') : '127.0.0.1', port };
}

export interface ServerConfig extends CommonConfig {
  listen: { host: string; port: number };
  /** postgres://… for a server; undefined: the embedded store in dataDir/db. */
  databaseUrl: string | undefined;
  adminToken: string | undefined;
  /** GET /metrics needs this bearer token when set (KILN_METRICS_TOKEN). */
  metricsToken: string | undefined;
  logLimitBytes: number;
  hostLostAfterMs: number;
  /** Request bodies (server/http/body-intake.ts): the deadline, and the bytes of large bodies received at once. */
  bodyTimeoutMs: number;
  bodyBudgetBytes: number;
  /** kiln's own TLS: the certificate chain and key (PEM, read at start); undefined: plain HTTP. */
  tls: { cert: Buffer; key: Buffer; certFile: string } | undefined;
  /** A CA to trust (PEM), for kiln up's local agent when the certificate is not trusted by the system. */
  ca: Buffer | undefined;
  /** GitHub App settings (KILN_GITHUB_* or the file's github: section); undefined when not configured. */
  github: GitHubConfig | undefined;
  /** kiln up's local agent's mirror (kiln server ignores it). */
  mirror: MirrorConfig | undefined;
  /** Host power: sleep policy and wake commands. */
  power: PowerOptions;
  /**
   * Test-only (KILN_TEST_HOLD_STARTS=1): the server never records nor answers a job's start request, so a
   * test can SIGKILL it at the moment between "the guest is up" and "the command may start".
   */
  testHoldStarts: boolean;
}

export interface ServerFlags extends MirrorFlags {
  dataDir?: string;
  logLevel?: string;
  config?: string;
  listen?: string;
  databaseUrl?: string;
  logLimit?: string;
  tlsCert?: string;
  tlsKey?: string;
  ca?: string;
}

export const DEFAULT_PORT = 7370;

export function loadServerConfig(flags: ServerFlags, env: Env = process.env, fileIn?: FileConfig): ServerConfig {
  const p = new Problems();
  const file = fileIn ?? p.try(() => readConfigFile(flags.config ?? env.KILN_CONFIG)) ?? {};
  const common = loadCommonConfig({ dataDir: flags.dataDir ?? file.dataDir, logLevel: flags.logLevel ?? env.KILN_LOG_LEVEL ?? file.logLevel }, env);
  if (!['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'].includes(common.logLevel)) p.list.push(`log level "${common.logLevel}" is not one of trace, debug, info, warn, error, silent`);
  const listenText = first(flags.listen, env.KILN_LISTEN, file.server?.listen) ?? `127.0.0.1:${DEFAULT_PORT}`;
  const listen = p.try(() => parseListen(listenText)) ?? { host: '127.0.0.1', port: DEFAULT_PORT };
  const databaseUrl = first(flags.databaseUrl, env.KILN_DATABASE_URL, file.server?.databaseUrl);
  if (databaseUrl && !/^postgres(ql)?:\/\//.test(databaseUrl)) p.list.push('the database URL must start with postgres://');
  const logLimit = first<string | number>(flags.logLimit, env.KILN_LOG_LIMIT, file.server?.logLimit) ?? '16M';
  const logLimitBytes = p.try(() => (typeof logLimit === 'number' ? logLimit : parseSize(logLimit, 'log limit'))) ?? 16 * 1024 * 1024;
  const lostText = first(env.KILN_HOST_LOST_AFTER, file.server?.hostLostAfter) ?? '30s';
  const hostLostAfterMs = p.try(() => parseDuration(lostText, 'host lost-after')) ?? 30_000;
  const adminToken = first(env.KILN_ADMIN_TOKEN, file.server?.adminToken);
  if (adminToken !== undefined && adminToken.length < 16) p.list.push('KILN_ADMIN_TOKEN must be at least 16 characters');
  const bodyTimeoutMs = p.try(() => parseDuration(first(env.KILN_BODY_TIMEOUT, file.server?.bodyTimeout) ?? '30s', 'body timeout')) ?? 30_000;
  const budget = first<string | number>(env.KILN_BODY_BUDGET, file.server?.bodyBudget) ?? '64M';
  const bodyBudgetBytes = p.try(() => (typeof budget === 'number' ? budget : parseSize(budget, 'body budget'))) ?? 64 * 1024 * 1024;
  if (bodyBudgetBytes < 26 * 1024 * 1024) p.list.push('the body budget (KILN_BODY_BUDGET) must be at least 26M: one 25 MiB webhook body must fit');
  const certFile = first(flags.tlsCert, env.KILN_TLS_CERT, file.server?.tlsCert);
  const keyFile = first(flags.tlsKey, env.KILN_TLS_KEY, file.server?.tlsKey);
  let tls: ServerConfig['tls'];
  if ((certFile === undefined) !== (keyFile === undefined)) p.list.push('--tls-cert and --tls-key go together: give both (or neither, for plain HTTP)');
  else if (certFile && keyFile) {
    const cert = p.try(() => readPem(certFile, 'TLS certificate', /-----BEGIN CERTIFICATE-----/));
    const key = p.try(() => readPem(keyFile, 'TLS key', /-----BEGIN [A-Z ]*PRIVATE KEY-----/));
    if (cert && key) tls = { cert, key, certFile };
  }
  const caFile = first(flags.ca, env.KILN_CA, file.client?.ca);
  const ca = caFile ? p.try(() => readPem(caFile, 'CA certificate', /-----BEGIN CERTIFICATE-----/)) : undefined;
  const github = p.try(() => parseGitHubConfig(env, file.github));
  const mirror = loadMirrorConfig(flags, env, file.mirror ?? file.agent?.mirror, p);
  const power = loadPowerOptions(file.power, env, p.list);
  const metricsToken = first(env.KILN_METRICS_TOKEN, file.server?.metricsToken);
  if (metricsToken !== undefined && metricsToken.length < 16) p.list.push('KILN_METRICS_TOKEN must be at least 16 characters');
  p.throwIfAny('server');
  const testHoldStarts = env.KILN_TEST_HOLD_STARTS === '1';
  return { ...common, listen, databaseUrl, adminToken, metricsToken, logLimitBytes, hostLostAfterMs, bodyTimeoutMs, bodyBudgetBytes, tls, ca, github, mirror, power, testHoldStarts };
}

export interface AgentConfig extends CommonConfig {
  servers: string[];
  token: string;
  name: string | undefined;
  labels: string[];
  arch: Arch | undefined;
  cpus: number | undefined;
  memoryBytes: number | undefined;
  diskBytes: number | undefined;
  driver: 'qemu' | 'memory';
  mirror: MirrorConfig | undefined;
  /** The host's power driver; undefined: none (it never sleeps). */
  power: AgentPowerOptions | undefined;
  /** A CA to trust for https:// / wss:// servers (PEM; --ca, KILN_CA); undefined: the system's. */
  ca: Buffer | undefined;
}

export interface AgentFlags extends MirrorFlags {
  dataDir?: string;
  logLevel?: string;
  config?: string;
  server?: string[];
  token?: string;
  name?: string;
  label?: string[];
  arch?: string;
  cpus?: string;
  memory?: string;
  disk?: string;
  driver?: string;
  powerDriver?: string;
  powerSleepCommand?: string;
  ca?: string;
}

export function loadAgentConfig(flags: AgentFlags, env: Env = process.env, fileIn?: FileConfig): AgentConfig {
  const p = new Problems();
  const file = fileIn ?? p.try(() => readConfigFile(flags.config ?? env.KILN_CONFIG)) ?? {};
  const common = loadCommonConfig({ dataDir: flags.dataDir ?? file.dataDir, logLevel: flags.logLevel ?? env.KILN_LOG_LEVEL ?? file.logLevel }, env);
  const fileServers = file.agent?.server === undefined ? undefined : ([] as string[]).concat(file.agent.server);
  const servers = (flags.server && flags.server.length > 0 ? flags.server : (env.KILN_SERVER?.split(',') ?? fileServers ?? []))
    .flatMap((s) => s.split(','))
    .map((s) => s.trim())
    .filter(Boolean);
  if (servers.length === 0) p.list.push('no server URL (pass --server URL, or set KILN_SERVER)');
  for (const s of servers) {
    try {
      const u = new URL(s);
      if (!['http:', 'https:', 'ws:', 'wss:'].includes(u.protocol)) throw new Error();
    } catch {
      p.list.push(`server URL "${s}" is not an http(s):// or ws(s):// URL`);
    }
  }
  const token = first(flags.token, env.KILN_TOKEN, file.agent?.token);
  if (!token) p.list.push('no join token (pass --token T from `kiln tokens create --role agent`, or set KILN_TOKEN)');
  const name = first(flags.name, env.KILN_AGENT_NAME, file.agent?.name);
  if (name !== undefined && !/^[A-Za-z0-9._-]{1,100}$/.test(name)) p.list.push(`host name "${name}" may use only letters, digits, . _ and -`);
  const labels = flags.label && flags.label.length > 0 ? flags.label : (env.KILN_AGENT_LABELS?.split(',').map((s) => s.trim()).filter(Boolean) ?? file.agent?.labels ?? []);
  const archText = first(flags.arch, env.KILN_AGENT_ARCH, file.agent?.arch);
  const arch = archText ? p.try(() => parseArch(archText)) : undefined;
  const cpusText = first<string | number>(flags.cpus, file.agent?.cpus);
  const cpus = cpusText === undefined ? undefined : Number(cpusText);
  if (cpus !== undefined && (!Number.isInteger(cpus) || cpus < 1)) p.list.push(`cpus "${cpusText}" is not a whole number`);
  const memText = first(flags.memory, file.agent?.memory);
  const memoryBytes = memText ? p.try(() => parseSize(memText, 'memory')) : undefined;
  const diskText = first(flags.disk, file.agent?.disk);
  const diskBytes = diskText ? p.try(() => parseSize(diskText, 'disk')) : undefined;
  const driver = first(flags.driver, env.KILN_AGENT_DRIVER, file.agent?.driver) ?? 'qemu';
  if (driver !== 'qemu' && driver !== 'memory') p.list.push(`driver "${driver}" is not qemu or memory`);
  const mirror = loadMirrorConfig(flags, env, file.agent?.mirror ?? file.mirror, p);
  const power = loadAgentPower(flags, env, file.agent?.power, p.list);
  const caFile = first(flags.ca, env.KILN_CA, file.agent?.ca);
  const ca = caFile ? p.try(() => readPem(caFile, 'CA certificate', /-----BEGIN CERTIFICATE-----/)) : undefined;
  p.throwIfAny('agent');
  return { ...common, servers, token: token!, name, labels, arch, cpus, memoryBytes, diskBytes, driver: driver as 'qemu' | 'memory', mirror, power, ca };
}

export interface ClientConfig {
  /** undefined: no server named; `kiln run` then starts one in-process. */
  server: string | undefined;
  token: string | undefined;
  /** A CA to trust for an https:// server (PEM; --ca, KILN_CA); undefined: the system's. */
  ca: Buffer | undefined;
}

export function loadClientConfig(flags: { server?: string; token?: string; config?: string; ca?: string }, env: Env = process.env, readToken?: () => string | undefined): ClientConfig {
  const p = new Problems();
  const file = p.try(() => readConfigFile(flags.config ?? env.KILN_CONFIG)) ?? {};
  const caFile = first(flags.ca, env.KILN_CA, file.client?.ca);
  const ca = caFile ? p.try(() => readPem(caFile, 'CA certificate', /-----BEGIN CERTIFICATE-----/)) : undefined;
  p.throwIfAny('client');
  const server = first(flags.server, env.KILN_SERVER, file.client?.server);
  const token = first(flags.token, env.KILN_TOKEN, file.client?.token) ?? readToken?.();
  return { server, token, ca };
}

/** A PEM file's contents, checked to hold what it should (a certificate, a key). */
function readPem(file: string, what: string, marker: RegExp): Buffer {
  let data: Buffer;
  try {
    data = readFileSync(file);
  } catch (e) {
    throw new KilnError('config.bad_file', `cannot read the ${what} ${file}: ${(e as Error).message}`);
  }
  if (!marker.test(data.toString('latin1'))) throw new KilnError('config.bad_file', `${file} is not a PEM ${what}`);
  return data;
}

/** A copy safe to log: secrets replaced, passwords removed from URLs. */
export function redact<T extends object>(cfg: T): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(cfg)) {
    if (/token|secret|password/i.test(k)) out[k] = v === undefined ? undefined : '[redacted]';
    else if (Buffer.isBuffer(v)) out[k] = /key/i.test(k) ? '[redacted]' : `[${v.length} bytes]`;
    else if (v !== null && typeof v === 'object' && !Array.isArray(v)) out[k] = redact(v);
    else if (typeof v === 'string') out[k] = redactUrl(v);
    else out[k] = v;
  }
  return out;
}

/**
 * A URL with its password hidden in every form: `user:pass@` (the password may hold `/` or `@`; everything
 * up to the last `@` before the path is taken as credentials) and `?password=`/`sslpassword=` parameters.
 */
export function redactUrl(v: string): string {
  if (!/^[a-z][a-z0-9+.-]*:\/\//i.test(v)) return v;
  let out = v.replace(/^([a-z][a-z0-9+.-]*:\/\/[^:@/?#]*):(.*)@(?=[^@]*$)/i, '$1:[redacted]@');
  out = out.replace(/([?&](?:password|sslpassword|pass|passwd|sslkey)=)[^&#]*/gi, '$1[redacted]');
  return out;
}
