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
  // `http://` on the insecure entry: dockerd strips it for its own pulls, and its BuildKit (docker build)
  // reads it as "plain HTTP"; a bare host:port made BuildKit try HTTPS on the mirror and fail (seen in the
  // fleet test). The mirror's trailing slash keeps the two lines apart for ci-boot.sh's sed.
  const dockerDaemonJson = { 'registry-mirrors': [`http://${a}/`], 'insecure-registries': [`http://${a}`] };
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
    '# Written by kiln: pull docker.io through the host mirror; short names (hello:1) are Docker Hub names, as for Docker.',
    'unqualified-search-registries = ["docker.io"]',
    '',
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

/** Registry names another mirror may serve (ghcr.io, quay.io, registry.example.com): a DNS name, no port. */
const REGISTRY_NAME_RE = /^(?=.{1,200}$)[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)+$/;
const DOCKER_HUB_NAMES = new Set(['docker.io', 'index.docker.io', 'registry-1.docker.io', 'registry.hub.docker.com']);

/**
 * Checks a registry name an operator mirrors besides Docker Hub. `docker.io` (and its aliases) is the default
 * registry and has its own, fixed guest address; other names are DNS names without a port or path.
 */
export function assertRegistryName(name: string): void {
  if (DOCKER_HUB_NAMES.has(name)) return;
  if (!REGISTRY_NAME_RE.test(name)) {
    throw new KilnError('mirror.registry_invalid', `registry name "${name}" is not a registry host name`, {
      hint: 'write it as the image references name it, e.g. ghcr.io or quay.io (lower case, no scheme, port or path)',
    });
  }
}

/** docker.io, or one of Docker Hub's other names. */
export function isDockerHub(name: string): boolean {
  return DOCKER_HUB_NAMES.has(name);
}

/** Placeholders the per-registry guest templates are rendered with at image build time (src/image/guest/ci-boot.sh fills them in). */
export const REGISTRY_NAME_PLACEHOLDER = 'kiln-registry-placeholder.invalid';
export const REGISTRY_ADDRESS_PLACEHOLDER = 'kiln-registry-address-placeholder:65534';

/**
 * Guest configs for a mirror of another registry (ghcr.io, quay.io) at `address` (host:port as the guest sees
 * it). containerd, BuildKit and the containers tools (buildah, podman, skopeo) take a per-registry mirror.
 * Docker 20.10 mirrors docker.io only, so the guest also points the registry's name at the address's IP
 * (`hostsLine`, for /etc/hosts) and lists `http://<name>` as an insecure registry (`dockerInsecure`): Docker then
 * tries https://<name> and, refused (the mirror speaks plain HTTP, on 443 too), http://<name>; kiln forwards
 * ports 80 and 443 of that IP to the mirror as well. No upstream fallback: the name is the mirror's in the guest.
 */
export function renderGuestRegistryMirror(opts: { registry: string; address: string }): { files: GuestFile[]; buildkitdToml: string; hostsLine: string; dockerInsecure: string } {
  const { registry: r, address: a } = opts;
  if (r !== REGISTRY_NAME_PLACEHOLDER) {
    assertRegistryName(r);
    if (isDockerHub(r)) throw new KilnError('mirror.registry_invalid', 'docker.io is mirrored through renderGuestMirrorConfigs', { kind: 'internal' });
  }
  assertHostPort(a, 'guest-visible mirror address');
  const ip = a.slice(0, a.lastIndexOf(':'));
  const header = `# Written by kiln: pull ${r} through the host mirror for it.`;
  const buildkitdToml = ['', header, `[registry.${tomlString(r)}]`, `  mirrors = [${tomlString(a)}]`, '', `[registry.${tomlString(a)}]`, '  http = true', '  insecure = true', ''].join('\n');
  const containerdHostsToml = [header, `server = ${tomlString(`http://${a}`)}`, '', `[host.${tomlString(`http://${a}`)}]`, '  capabilities = ["pull", "resolve"]', ''].join('\n');
  const registriesConf = [header, '[[registry]]', `prefix = ${tomlString(r)}`, `location = ${tomlString(r)}`, '', '[[registry.mirror]]', `location = ${tomlString(a)}`, 'insecure = true', ''].join('\n');
  return {
    buildkitdToml,
    hostsLine: `${ip}\t${r}`,
    dockerInsecure: `http://${r}`,
    files: [
      { path: `/etc/containerd/certs.d/${r}/hosts.toml`, content: containerdHostsToml, mode: 0o644 },
      { path: `/etc/containers/registries.conf.d/51-kiln-mirror-${r}.conf`, content: registriesConf, mode: 0o644 },
    ],
  };
}
