import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parse } from 'yaml';
import { isKilnError } from '../core/errors.ts';
import { assertRegistryName, renderGuestMirrorConfigs, renderGuestRegistryMirror, renderMirrorServerConfig } from './mirror-config.ts';

void test('server config: proxy mode, our listen address and storage, credentials only when given', () => {
  const doc = parse(renderMirrorServerConfig({ listen: '127.0.0.1:5000', storageDir: '/var/lib/kiln/mirror/storage', upstream: { url: 'https://registry-1.docker.io' }, secret: 's' })) as Record<string, Record<string, unknown>>;
  assert.equal(doc.http?.addr, '127.0.0.1:5000');
  assert.equal(doc.http?.secret, 's');
  assert.deepEqual(doc.proxy, { remoteurl: 'https://registry-1.docker.io' });
  assert.deepEqual((doc.storage?.filesystem as Record<string, unknown>).rootdirectory, '/var/lib/kiln/mirror/storage');
  assert.equal(doc.auth, undefined, 'no htpasswd block (Debian default answers 401 to everything)');
  const withCreds = parse(renderMirrorServerConfig({ listen: '10.0.0.1:5000', storageDir: '/s', upstream: { url: 'https://hub.example/', username: 'u', password: 'p"w: #' }, secret: 's' })) as Record<string, Record<string, unknown>>;
  assert.deepEqual(withCreds.proxy, { remoteurl: 'https://hub.example', username: 'u', password: 'p"w: #' });
});

void test('server config refuses bad addresses and upstreams with a path or inline credentials', () => {
  assert.throws(() => renderMirrorServerConfig({ listen: ':5000', storageDir: '/s', upstream: { url: 'https://x' }, secret: 's' }), (e) => isKilnError(e, 'mirror.address_invalid'));
  assert.throws(() => renderMirrorServerConfig({ listen: '127.0.0.1:5000', storageDir: '/s', upstream: { url: 'https://x/proxy' }, secret: 's' }), (e) => isKilnError(e, 'mirror.upstream_invalid'));
  assert.throws(() => renderMirrorServerConfig({ listen: '127.0.0.1:5000', storageDir: '/s', upstream: { url: 'https://u:p@x' }, secret: 's' }), (e) => isKilnError(e, 'mirror.upstream_invalid'));
});

void test('guest configs point every client at the mirror address and carry no credentials', () => {
  const g = renderGuestMirrorConfigs({ address: '10.0.2.2:5000' });
  assert.deepEqual(g.dockerDaemonJson, { 'registry-mirrors': ['http://10.0.2.2:5000/'], 'insecure-registries': ['http://10.0.2.2:5000'] });
  // BuildKit: mirror under docker.io, HTTP settings in the mirror host's own section (not under docker.io).
  assert.match(g.buildkitdToml, /\[registry\."docker\.io"\]\n\s+mirrors = \["10\.0\.2\.2:5000"\]/);
  assert.match(g.buildkitdToml, /\[registry\."10\.0\.2\.2:5000"\]\n\s+http = true/);
  assert.match(g.containerdHostsToml, /^server = "https:\/\/registry-1\.docker\.io"$/m);
  assert.match(g.containerdHostsToml, /\[host\."http:\/\/10\.0\.2\.2:5000"\]\n\s+capabilities = \["pull", "resolve"\]/);
  assert.match(g.registriesConf, /prefix = "docker\.io"[\s\S]*\[\[registry\.mirror\]\]\nlocation = "10\.0\.2\.2:5000"\ninsecure = true/);
  assert.deepEqual(g.files.map((f) => f.path), ['/etc/docker/daemon.json', '/etc/buildkit/buildkitd.toml', '/etc/containerd/certs.d/docker.io/hosts.toml', '/etc/containers/registries.conf.d/50-kiln-mirror.conf']);
  assert.equal(JSON.parse(g.files[0]?.content ?? '')['registry-mirrors'][0], 'http://10.0.2.2:5000/');
  assert.doesNotMatch(renderGuestMirrorConfigs({ address: '10.0.2.2:5000', fallbackToUpstream: false }).containerdHostsToml, /server =/);
  assert.throws(() => renderGuestMirrorConfigs({ address: 'http://10.0.2.2:5000' }), (e) => isKilnError(e, 'mirror.address_invalid'));
});

void test('another registry: per-registry files, a BuildKit section, the /etc/hosts line and Docker entry; bad names refused', () => {
  const g = renderGuestRegistryMirror({ registry: 'ghcr.io', address: '10.0.2.101:5000' });
  assert.deepEqual(g.files.map((f) => f.path), ['/etc/containerd/certs.d/ghcr.io/hosts.toml', '/etc/containers/registries.conf.d/51-kiln-mirror-ghcr.io.conf']);
  assert.match(g.files[0]!.content, /\[host\."http:\/\/10\.0\.2\.101:5000"\]\n\s+capabilities = \["pull", "resolve"\]/);
  assert.doesNotMatch(g.files[0]!.content, /https:\/\/ghcr\.io/, 'no fallback to the registry itself: its name is the mirror in the guest');
  assert.match(g.files[1]!.content, /prefix = "ghcr\.io"[\s\S]*\[\[registry\.mirror\]\]\nlocation = "10\.0\.2\.101:5000"\ninsecure = true/);
  assert.match(g.buildkitdToml, /\[registry\."ghcr\.io"\]\n\s+mirrors = \["10\.0\.2\.101:5000"\]/);
  assert.equal(g.hostsLine, '10.0.2.101\tghcr.io');
  assert.equal(g.dockerInsecure, 'http://ghcr.io');
  for (const bad of ['GHCR.IO', 'ghcr', 'ghcr.io:443', 'https://ghcr.io', 'ghcr.io/x', 'a b.io', '-x.io']) {
    assert.throws(() => renderGuestRegistryMirror({ registry: bad, address: '10.0.2.101:5000' }), (e) => isKilnError(e, 'mirror.registry_invalid'), bad);
  }
  assert.throws(() => renderGuestRegistryMirror({ registry: 'docker.io', address: '10.0.2.101:5000' }), (e) => isKilnError(e, 'mirror.registry_invalid'));
  assert.doesNotThrow(() => assertRegistryName('registry.example.com'));
  // Short names are Docker Hub names for buildah too, as for Docker.
  assert.match(renderGuestMirrorConfigs({ address: '10.0.2.100:5000' }).registriesConf, /^unqualified-search-registries = \["docker\.io"\]$/m);
});
