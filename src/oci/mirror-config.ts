/**
 * Pure renderers for the per-host pull-through mirror: the CNCF distribution (docker-registry 2.8) config
 * kiln writes for it, and the guest-side configs that point Docker, BuildKit, containerd and the containers
 * tools (buildah, podman, skopeo) at it. Guests get the mirror's address only, never upstream credentials.
 */
import { stringify } from 'yaml';
import { KilnError } from '../core/errors.ts';

export const DOCKER_HUB_UPSTREAM = 'https://registry-1.docker.io';

export interface MirrorServerConfigInput {
  /** host:port the registry listens on (loopback, or an address the host's VMs can reach). */
  listen: string;
  storageDir: string;
  upstream: { url: string; username?: string | undefined; password?: string | undefined };
  /** Fixed HTTP secret, so restarts keep upload state valid (distribution warns without one). */
  secret: string;
  logLevel?: 'error' | 'warn' | 'info' | 'debug';
}

const HOSTPORT_RE = /^(?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?):[0-9]{1,5}$/;

export function assertHostPort(address: string, what: string): void {
  if (!HOSTPORT_RE.test(address)) {
    throw new KilnError('mirror.address_invalid', `${what} "${address}" is not host:port`, { hint: 'write it like 127.0.0.1:5000 or 10.0.2.100:5000 (no scheme, no path)' });
  }
}

/** Checks the upstream is a root URL (distribution proxies only the root of one registry). */
export function assertUpstreamUrl(url: string): URL {
  let u: URL;
  try {
    u = new URL(url);
  } catch (e) {
    throw new KilnError('mirror.upstream_invalid', `mirror upstream "${url}" is not a URL`, { cause: e, hint: `use ${DOCKER_HUB_UPSTREAM} for Docker Hub` });
  }
  if ((u.protocol !== 'https:' && u.protocol !== 'http:') || (u.pathname !== '/' && u.pathname !== '') || u.search || u.username || u.password) {
    throw new KilnError('mirror.upstream_invalid', `mirror upstream "${url}" must be a root http(s) URL without credentials or path`, {
      hint: 'give credentials separately (they stay in the host-only config file); one upstream per mirror',
    });
  }
  return u;
}


/** The registry's config.yml in proxy mode. Never Debian's packaged one (it answers 401 and binds everywhere). */
export function renderMirrorServerConfig(c: MirrorServerConfigInput): string {
  assertHostPort(c.listen, 'mirror listen address');
  const upstream = assertUpstreamUrl(c.upstream.url);
  const proxy: Record<string, string> = { remoteurl: upstream.origin };
  if (c.upstream.username) {
    proxy.username = c.upstream.username;
    proxy.password = c.upstream.password ?? '';
  }
  const doc = {
    version: 0.1,
    log: { level: c.logLevel ?? 'info', accesslog: { disabled: true } },
    storage: {
      filesystem: { rootdirectory: c.storageDir },
      // The proxy's TTL scheduler removes expired content only when delete is enabled (2.8 fixes TTL at 7 days).
      delete: { enabled: true },
      cache: { blobdescriptor: 'inmemory' },
    },
    http: { addr: c.listen, secret: c.secret, headers: { 'X-Content-Type-Options': ['nosniff'] } },
    health: { storagedriver: { enabled: true, interval: '10s', threshold: 3 } },
    proxy,
  };
  return stringify(doc);
}

export interface GuestFile {
  path: string;
  content: string;
  mode: number;
}

export interface GuestMirrorConfigs {
  /** /etc/docker/daemon.json (registry-mirrors applies to docker.io only). */
  dockerDaemonJson: Record<string, unknown>;
  /** /etc/buildkit/buildkitd.toml (docker-container builders ignore daemon.json). */
  buildkitdToml: string;
  /** /etc/containerd/certs.d/docker.io/hosts.toml (containerd's config_path must point at certs.d). */
  containerdHostsToml: string;
  /** /etc/containers/registries.conf.d/…: buildah, podman, skopeo. */
  registriesConf: string;
  files: GuestFile[];
}

function tomlString(s: string): string {
  return JSON.stringify(s);
}

/**
 * Guest configs for a mirror at `address` (host:port as the guest sees it, served over plain HTTP on the
 * host-guest link). `fallbackToUpstream` lets clients go to Docker Hub when the mirror fails.
 */
export function renderGuestMirrorConfigs(opts: { address: string; fallbackToUpstream?: boolean }): GuestMirrorConfigs {
  assertHostPort(opts.address, 'guest-visible mirror address');
  const a = opts.address;
  const fallback = opts.fallbackToUpstream ?? true;
  const dockerDaemonJson = { 'registry-mirrors': [`http://${a}`], 'insecure-registries': [a] };
  const buildkitdToml = [
    '# Written by kiln: pull docker.io through the host mirror.',
    '[registry."docker.io"]',
    `  mirrors = [${tomlString(a)}]`,
    '',
    `[registry.${tomlString(a)}]`,
    '  http = true',
    '  insecure = true',
    '',
  ].join('\n');
  const containerdHostsToml = [
    '# Written by kiln: pull docker.io through the host mirror.',
    ...(fallback ? [`server = ${tomlString('https://registry-1.docker.io')}`, ''] : []),
    `[host.${tomlString(`http://${a}`)}]`,
    '  capabilities = ["pull", "resolve"]',
    '',
  ].join('\n');
  const registriesConf = [
    '# Written by kiln: pull docker.io through the host mirror.',
    '[[registry]]',
    'prefix = "docker.io"',
    'location = "docker.io"',
    '',
    '[[registry.mirror]]',
    `location = ${tomlString(a)}`,
    'insecure = true',
    '',
  ].join('\n');
  return {
    dockerDaemonJson,
    buildkitdToml,
    containerdHostsToml,
    registriesConf,
    files: [
      { path: '/etc/docker/daemon.json', content: `${JSON.stringify(dockerDaemonJson, null, 2)}\n`, mode: 0o644 },
      { path: '/etc/buildkit/buildkitd.toml', content: buildkitdToml, mode: 0o644 },
      { path: '/etc/containerd/certs.d/docker.io/hosts.toml', content: containerdHostsToml, mode: 0o644 },
      { path: '/etc/containers/registries.conf.d/50-kiln-mirror.conf', content: registriesConf, mode: 0o644 },
    ],
  };
}
