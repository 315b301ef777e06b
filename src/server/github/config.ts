/**
 * GitHub App settings. Parsed from an env-like record and the config file's `github:` section by
 * `parseGitHubConfig` (called from the config module, which is the only code that reads process.env).
 * Secrets are wrapped in `Secret`, which serialises as "[redacted]", so logging the config never leaks them.
 */
import { readFileSync } from 'node:fs';
import { inspect } from 'node:util';
import { KilnError } from '../../core/errors.ts';
import { parseDuration } from '../../core/sizes.ts';

export class Secret {
  readonly #value: string;
  constructor(value: string) {
    this.#value = value;
  }
  reveal(): string {
    return this.#value;
  }
  toJSON(): string {
    return '[redacted]';
  }
  toString(): string {
    return '[redacted]';
  }
  [inspect.custom](): string {
    return '[redacted]';
  }
}

export interface GitHubConfig {
  /** The App's numeric id (shown on the App's settings page). */
  appId: string;
  /** The App's client id: the JWT issuer GitHub recommends. Falls back to the app id. */
  clientId: string | undefined;
  privateKey: Secret;
  /** Webhook secrets; the first is current, the rest are accepted during rotation. */
  webhookSecrets: Secret[];
  apiUrl: string;
  /** `owner` (every repository of an owner) or `owner/repo`. Empty: nothing is allowed. */
  allow: string[];
  /** Public repositories (`owner/repo`, or `owner` for all of an owner's) whose fork pull requests may run. */
  forkPrAllowed: string[];
  /**
   * Branches whose pushes may write caches besides each repository's default branch (docs/caches.md):
   * `owner/repo:branch` for one repository, or `branch` for all (KILN_GITHUB_CACHE_WRITE_BRANCHES).
   */
  cacheWriteBranches: string[];
  /**
   * Tags whose pushes may write caches (docs/caches.md): `owner/repo:PATTERN` for one repository, or `PATTERN`
   * for all, `*` matching any characters (`*`: every tag; `v*`) (KILN_GITHUB_CACHE_WRITE_TAGS). Default: none.
   */
  cacheWriteTags: string[];
  /** Register runners per repository (default) or per organization (org-owned repositories only). */
  runnerLevel: 'repo' | 'org';
  runnerGroupId: number;
  /** Most runners (VMs) kiln keeps at once for GitHub. */
  maxRunners: number;
  /**
   * Idle runners kept ready per label set (demand key) used in the last 24 h, beyond its queued jobs, so a
   * job finds a runner already online (default 0). Within maxRunners and the API budget.
   */
  spareRunners: number;
  /** Guest image and command that start the Actions runner (the runner image profile). */
  runnerImage: string;
  runnerCommand: string[];
  runnerNamePrefix: string;
  /** Tenant the runner VMs are accounted to. */
  tenant: string;
  /** Longest a runner VM may live (the kiln job timeout). */
  runnerTimeoutMs: number;
  bootTimeoutMs: number;
  idleGraceMs: number;
  reconcileMs: number;
  /** Lost deliveries are looked for this often (default: four reconcile intervals). */
  redeliverMs: number;
  /** Most GitHub API calls kiln makes in any minute (a ceiling no fault can push it past). */
  apiCallsPerMinute: number;
  /** Known-queued jobs are re-read from GitHub this often. */
  recheckMs: number;
  maxFailures: number;
  backoffBaseMs: number;
  backoffMaxMs: number;
}

/** The `github:` section of the config file. */
export interface GitHubFileConfig {
  appId?: string | number;
  clientId?: string;
  privateKey?: string;
  privateKeyFile?: string;
  webhookSecret?: string;
  webhookSecrets?: string[];
  apiUrl?: string;
  allow?: string[];
  forkPrAllowed?: string[];
  cacheWriteBranches?: string[];
  cacheWriteTags?: string[];
  runnerLevel?: string;
  runnerGroupId?: number;
  maxRunners?: number;
  spareRunners?: number;
  runnerImage?: string;
  runnerCommand?: string[];
  tenant?: string;
  runnerTimeout?: string;
  bootTimeout?: string;
  idleGrace?: string;
  reconcileEvery?: string;
  redeliverEvery?: string;
  apiCallsPerMinute?: number;
}

export const GITHUB_DEFAULTS = {
  apiUrl: 'https://api.github.com',
  runnerLevel: 'repo',
  runnerGroupId: 1,
  maxRunners: 20,
  spareRunners: 0,
  runnerImage: 'runner',
  runnerCommand: ['/opt/kiln/start-runner'],
  runnerNamePrefix: 'kiln',
  tenant: 'github',
  runnerTimeoutMs: 6 * 3600_000 + 10 * 60_000,
  bootTimeoutMs: 5 * 60_000,
  idleGraceMs: 2 * 60_000,
  reconcileMs: 15_000,
  apiCallsPerMinute: 300,
  recheckMs: 60_000,
  maxFailures: 5,
  backoffBaseMs: 10_000,
  backoffMaxMs: 15 * 60_000,
} as const;

const list = (s: string | undefined): string[] | undefined => (s === undefined || s === '' ? undefined : s.split(',').map((x) => x.trim()).filter(Boolean));

/**
 * KILN_GITHUB_RUNNER_COMMAND: a JSON array of arguments (`["/opt/kiln/start-runner","--flag=a,b"]`), which can
 * hold any character, or a comma-separated list for simple commands.
 */
function runnerCommand(text: string | undefined, problems: string[]): string[] | undefined {
  if (text === undefined || text.trim() === '') return undefined;
  if (!text.trimStart().startsWith('[')) return list(text);
  try {
    const v: unknown = JSON.parse(text);
    if (Array.isArray(v) && v.length > 0 && v.every((x) => typeof x === 'string')) return v as string[];
  } catch {
    // reported below
  }
  problems.push('KILN_GITHUB_RUNNER_COMMAND starting with "[" must be a JSON array of strings, e.g. ["/opt/kiln/start-runner","--flag"]');
  return undefined;
}

/**
 * Returns undefined when GitHub is not configured at all (no app id, key or secret anywhere); otherwise a
 * complete config, or a `config.invalid` error naming every problem.
 */
export function parseGitHubConfig(env: Record<string, string | undefined>, file: GitHubFileConfig = {}): GitHubConfig | undefined {
  const appId = env.KILN_GITHUB_APP_ID ?? (file.appId === undefined ? undefined : String(file.appId));
  const keyFile = env.KILN_GITHUB_PRIVATE_KEY_FILE ?? file.privateKeyFile;
  const keyText = env.KILN_GITHUB_PRIVATE_KEY ?? file.privateKey;
  const secrets = [
    ...(env.KILN_GITHUB_WEBHOOK_SECRET ? [env.KILN_GITHUB_WEBHOOK_SECRET] : file.webhookSecret ? [file.webhookSecret] : []),
    ...(env.KILN_GITHUB_WEBHOOK_SECRET_PREVIOUS ? [env.KILN_GITHUB_WEBHOOK_SECRET_PREVIOUS] : []),
    ...(file.webhookSecrets ?? []),
  ];
  if (!appId && !keyFile && !keyText && secrets.length === 0) return undefined;
  const problems: string[] = [];
  if (!appId || !/^\d+$/.test(appId)) problems.push('the GitHub App id (KILN_GITHUB_APP_ID) must be a number');
  let privateKey = keyText?.replace(/\\n/g, '\n');
  if (!privateKey && keyFile) {
    try {
      privateKey = readFileSync(keyFile, 'utf8');
    } catch {
      problems.push(`cannot read the GitHub App private key file ${keyFile}`);
    }
  }
  if (!privateKey) problems.push('no GitHub App private key (KILN_GITHUB_PRIVATE_KEY_FILE or KILN_GITHUB_PRIVATE_KEY)');
  else if (!/-----BEGIN (RSA )?PRIVATE KEY-----/.test(privateKey)) problems.push('the GitHub App private key is not a PEM private key');
  if (secrets.length === 0) problems.push('no webhook secret (KILN_GITHUB_WEBHOOK_SECRET)');
  for (const s of secrets) if (s.length < 16) problems.push('webhook secrets must be at least 16 characters');
  const level = env.KILN_GITHUB_RUNNER_LEVEL ?? file.runnerLevel ?? GITHUB_DEFAULTS.runnerLevel;
  if (level !== 'repo' && level !== 'org') problems.push(`runner level "${level}" is not repo or org`);
  const num = (text: string | number | undefined, what: string, dflt: number, min: number): number => {
    if (text === undefined || text === '') return dflt;
    const n = Number(text);
    if (!Number.isInteger(n) || n < min) {
      problems.push(`${what} "${text}" must be a whole number ≥ ${min}`);
      return dflt;
    }
    return n;
  };
  const dur = (text: string | undefined, what: string, dflt: number): number => {
    if (!text) return dflt;
    try {
      return parseDuration(text, what);
    } catch (e) {
      problems.push((e as Error).message);
      return dflt;
    }
  };
  const allow = list(env.KILN_GITHUB_ALLOW) ?? file.allow ?? [];
  const forkPrAllowed = list(env.KILN_GITHUB_FORK_PR_ALLOWED) ?? file.forkPrAllowed ?? [];
  for (const a of [...allow, ...forkPrAllowed]) {
    if (!/^[A-Za-z0-9_.-]+(\/[A-Za-z0-9_.-]+)?$/.test(a)) problems.push(`"${a}" is not an owner or owner/repo`);
  }
  const cacheWriteBranches = list(env.KILN_GITHUB_CACHE_WRITE_BRANCHES) ?? file.cacheWriteBranches ?? [];
  for (const b of cacheWriteBranches) {
    if (!/^([A-Za-z0-9_.-]+\/[A-Za-z0-9_.-]+:)?[A-Za-z0-9_./-]+$/.test(b)) problems.push(`cache write branch "${b}" is not a branch or owner/repo:branch`);
  }
  const cacheWriteTags = list(env.KILN_GITHUB_CACHE_WRITE_TAGS) ?? file.cacheWriteTags ?? [];
  for (const t of cacheWriteTags) {
    if (!/^([A-Za-z0-9_.-]+\/[A-Za-z0-9_.-]+:)?[A-Za-z0-9_.\/*-]+$/.test(t)) problems.push(`cache write tag "${t}" is not a tag pattern or owner/repo:pattern (letters, digits, . _ / - and * for any characters)`);
  }
  const apiUrl = (env.KILN_GITHUB_API_URL ?? file.apiUrl ?? GITHUB_DEFAULTS.apiUrl).replace(/\/+$/, '');
  if (!/^https?:\/\//.test(apiUrl)) problems.push(`GitHub API URL "${apiUrl}" is not an http(s) URL`);
  const cmd = runnerCommand(env.KILN_GITHUB_RUNNER_COMMAND, problems) ?? file.runnerCommand ?? [...GITHUB_DEFAULTS.runnerCommand];
  const reconcileMs = dur(env.KILN_GITHUB_RECONCILE_EVERY ?? file.reconcileEvery, 'reconcile interval', GITHUB_DEFAULTS.reconcileMs);
  const cfg: GitHubConfig = {
    appId: appId ?? '',
    clientId: env.KILN_GITHUB_CLIENT_ID ?? file.clientId,
    privateKey: new Secret(privateKey ?? ''),
    webhookSecrets: secrets.map((s) => new Secret(s)),
    apiUrl,
    allow,
    forkPrAllowed,
    cacheWriteBranches,
    cacheWriteTags,
    runnerLevel: level === 'org' ? 'org' : 'repo',
    runnerGroupId: num(env.KILN_GITHUB_RUNNER_GROUP_ID ?? file.runnerGroupId, 'runner group id', GITHUB_DEFAULTS.runnerGroupId, 1),
    maxRunners: num(env.KILN_GITHUB_MAX_RUNNERS ?? file.maxRunners, 'max runners', GITHUB_DEFAULTS.maxRunners, 0),
    spareRunners: num(env.KILN_GITHUB_SPARE_RUNNERS ?? file.spareRunners, 'spare runners per label set', GITHUB_DEFAULTS.spareRunners, 0),
    runnerImage: env.KILN_GITHUB_RUNNER_IMAGE ?? file.runnerImage ?? GITHUB_DEFAULTS.runnerImage,
    runnerCommand: cmd,
    runnerNamePrefix: GITHUB_DEFAULTS.runnerNamePrefix,
    tenant: env.KILN_GITHUB_TENANT ?? file.tenant ?? GITHUB_DEFAULTS.tenant,
    runnerTimeoutMs: dur(env.KILN_GITHUB_RUNNER_TIMEOUT ?? file.runnerTimeout, 'runner timeout', GITHUB_DEFAULTS.runnerTimeoutMs),
    bootTimeoutMs: dur(env.KILN_GITHUB_BOOT_TIMEOUT ?? file.bootTimeout, 'runner boot timeout', GITHUB_DEFAULTS.bootTimeoutMs),
    idleGraceMs: dur(env.KILN_GITHUB_IDLE_GRACE ?? file.idleGrace, 'runner idle grace', GITHUB_DEFAULTS.idleGraceMs),
    reconcileMs,
    redeliverMs: dur(env.KILN_GITHUB_REDELIVER_EVERY ?? file.redeliverEvery, 'redelivery interval', 4 * reconcileMs),
    apiCallsPerMinute: num(env.KILN_GITHUB_API_CALLS_PER_MINUTE ?? file.apiCallsPerMinute, 'GitHub API calls per minute', GITHUB_DEFAULTS.apiCallsPerMinute, 1),
    recheckMs: GITHUB_DEFAULTS.recheckMs,
    maxFailures: GITHUB_DEFAULTS.maxFailures,
    backoffBaseMs: GITHUB_DEFAULTS.backoffBaseMs,
    backoffMaxMs: GITHUB_DEFAULTS.backoffMaxMs,
  };
  if (problems.length > 0) {
    throw new KilnError('config.invalid', `GitHub configuration has ${problems.length} problem(s): ${problems.join('; ')}`, {
      hint: 'fix the KILN_GITHUB_* variables or the github: section of the config file (see README, "GitHub Actions")',
    });
  }
  return cfg;
}
