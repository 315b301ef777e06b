/**
 * Registry credentials and auth challenges. Credentials come from a Docker config.json (`auths`, `credHelpers`,
 * `credsStore`) and from explicit per-host credentials the CLI builds from the environment. Challenge parsing
 * is pure; the config file and credential helpers are the only I/O here.
 */
import { spawn } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { KilnError } from '../core/errors.ts';
import { DOCKER_HUB } from './reference.ts';

export type Credential = { username: string; password: string } | { identityToken: string };

/** The port the registry client asks for credentials through. */
export interface CredentialSource {
  get(registry: string): Promise<Credential | undefined>;
}

export interface Challenge {
  scheme: string;
  params: Record<string, string>;
}

/** Parses a WWW-Authenticate header (RFC 7235: `Bearer realm="…",service="…",scope="…"`, possibly several). */
export function parseChallenges(header: string): Challenge[] {
  const out: Challenge[] = [];
  let i = 0;
  const s = header;
  let current: Challenge | undefined;
  const skipWs = () => {
    while (i < s.length && (s[i] === ' ' || s[i] === '\t' || s[i] === ',')) i++;
  };
  while (i < s.length) {
    skipWs();
    const m = /^([A-Za-z0-9!#$%&'*+.^_`|~-]+)/.exec(s.slice(i));
    if (!m) break;
    const token = m[1] as string;
    i += token.length;
    while (s[i] === ' ') i++;
    if (s[i] === '=') {
      i++;
      while (s[i] === ' ') i++;
      let value = '';
      if (s[i] === '"') {
        i++;
        while (i < s.length && s[i] !== '"') {
          if (s[i] === '\\' && i + 1 < s.length) i++;
          value += s[i];
          i++;
        }
        i++;
      } else {
        const v = /^[^,\s]*/.exec(s.slice(i))?.[0] ?? '';
        value = v;
        i += v.length;
      }
      if (current) current.params[token.toLowerCase()] = value;
    } else {
      current = { scheme: token.toLowerCase(), params: {} };
      out.push(current);
    }
  }
  return out;
}

/** The `scope` values a challenge asks for (space-separated in one parameter). */
export function challengeScopes(c: Challenge): string[] {
  return (c.params.scope ?? '').split(' ').filter((x) => x !== '');
}

/** Merges repository scopes so each repository appears once with the union of its actions. */
export function mergeScopes(scopes: string[]): string[] {
  const byResource = new Map<string, Set<string>>();
  const order: string[] = [];
  for (const s of scopes) {
    const last = s.lastIndexOf(':');
    if (last < 0) continue;
    const resource = s.slice(0, last);
    if (!byResource.has(resource)) {
      byResource.set(resource, new Set());
      order.push(resource);
    }
    for (const a of s.slice(last + 1).split(',')) if (a) byResource.get(resource)?.add(a);
  }
  return order.sort().map((r) => `${r}:${[...(byResource.get(r) ?? [])].sort().join(',')}`);
}

export function repositoryScope(repository: string, actions: 'pull' | 'pull,push'): string {
  return `repository:${repository}:${actions}`;
}

interface DockerConfigFile {
  auths?: Record<string, { auth?: string; username?: string; password?: string; identitytoken?: string }>;
  credHelpers?: Record<string, string>;
  credsStore?: string;
}

/** The keys Docker writes for a registry in config.json (Docker Hub has its legacy index URL). */
export function configKeysFor(registry: string): string[] {
  if (registry === DOCKER_HUB) return ['https://index.docker.io/v1/', 'index.docker.io', 'docker.io', 'registry-1.docker.io'];
  return [registry, `https://${registry}`, `http://${registry}`];
}

function normaliseKey(key: string): string {
  return key.replace(/^[a-z]+:\/\//i, '').replace(/\/.*$/, '').toLowerCase();
}

/** Reads one entry of `auths`; `auth` is base64 of user:password. */
export function credentialFromAuthEntry(entry: { auth?: string; username?: string; password?: string; identitytoken?: string }): Credential | undefined {
  if (entry.identitytoken) return { identityToken: entry.identitytoken };
  if (entry.auth) {
    const decoded = Buffer.from(entry.auth, 'base64').toString('utf8');
    const c = decoded.indexOf(':');
    if (c > 0) return { username: decoded.slice(0, c), password: decoded.slice(c + 1) };
  }
  if (entry.username && entry.password !== undefined) return { username: entry.username, password: entry.password };
  return undefined;
}

export interface DockerConfigCredentialsOptions {
  /** Path of config.json. The CLI resolves it from --registry-config, $DOCKER_CONFIG or ~/.docker. */
  configFile?: string | undefined;
  /** Credentials given explicitly (e.g. from KILN_REGISTRY_USERNAME/PASSWORD), winning over the file. */
  explicit?: Record<string, Credential>;
  /** Runs `docker-credential-<helper> get`; replaceable for hosts without helpers installed. */
  runHelper?: (helper: string, serverUrl: string) => Promise<{ Username: string; Secret: string } | undefined>;
}

async function defaultRunHelper(helper: string, serverUrl: string): Promise<{ Username: string; Secret: string } | undefined> {
  return new Promise((resolve, reject) => {
    const p = spawn(`docker-credential-${helper}`, ['get'], { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    p.stdout.on('data', (d: Buffer) => (out += d.toString()));
    p.on('error', (e) =>
      reject(new KilnError('oci.credential_helper_failed', `credential helper docker-credential-${helper} could not run: ${e.message}`, {
        hint: `install docker-credential-${helper}, or remove it from config.json credHelpers/credsStore`,
        cause: e,
      })),
    );
    p.on('close', (code) => {
      if (code !== 0) return resolve(undefined); // "credentials not found" exits non-zero
      try {
        resolve(JSON.parse(out) as { Username: string; Secret: string });
      } catch (e) {
        reject(new KilnError('oci.credential_helper_failed', `docker-credential-${helper} printed something that is not JSON`, { cause: e }));
      }
    });
    p.stdin.end(serverUrl);
  });
}

/** Credentials from a Docker config.json (read once, lazily) plus explicit ones. */
export function makeDockerConfigCredentials(opts: DockerConfigCredentialsOptions): CredentialSource {
  let loaded: Promise<DockerConfigFile> | undefined;
  const load = (): Promise<DockerConfigFile> =>
    (loaded ??= (async () => {
      if (!opts.configFile) return {};
      let text: string;
      try {
        text = await readFile(opts.configFile, 'utf8');
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') return {};
        throw new KilnError('oci.registry_config_unreadable', `cannot read ${opts.configFile}: ${(e as Error).message}`, { cause: e, hint: 'check its permissions' });
      }
      try {
        return JSON.parse(text) as DockerConfigFile;
      } catch (e) {
        throw new KilnError('oci.registry_config_invalid', `${opts.configFile} is not valid JSON`, { cause: e, hint: 'fix the file, or run `docker login` again to rewrite it' });
      }
    })());
  const runHelper = opts.runHelper ?? defaultRunHelper;
  return {
    async get(registry) {
      const explicit = opts.explicit?.[registry];
      if (explicit) return explicit;
      const cfg = await load();
      const keys = configKeysFor(registry);
      const helper = keys.map((k) => cfg.credHelpers?.[k]).find((h) => h !== undefined) ?? cfg.credsStore;
      if (helper) {
        for (const k of keys) {
          const r = await runHelper(helper, k);
          if (r && r.Secret) return r.Username === '<token>' ? { identityToken: r.Secret } : { username: r.Username, password: r.Secret };
        }
      }
      const wanted = new Set(keys.map(normaliseKey));
      for (const [k, entry] of Object.entries(cfg.auths ?? {})) {
        if (!wanted.has(normaliseKey(k))) continue;
        const c = credentialFromAuthEntry(entry);
        if (c) return c;
      }
      return undefined;
    },
  };
}
