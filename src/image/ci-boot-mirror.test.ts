// The ci image's boot hook (guest/ci-boot.sh) puts the mirror configs in place from the kernel command line.
// Its mirror part runs here under busybox sh against a scratch root, with the templates build-ci.ts installs
// (rendered by the same functions), and what it writes is compared with the renderers' output for the real
// names and addresses: the shell only substitutes, the renderers decide the content.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { REGISTRY_ADDRESS_PLACEHOLDER, REGISTRY_NAME_PLACEHOLDER, renderGuestMirrorConfigs, renderGuestRegistryMirror } from '../oci/mirror-config.ts';
import { MIRROR_PLACEHOLDER } from './build-ci.ts';
import { guestFile } from './build-minimal.ts';

const dirs: string[] = [];
after(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

/**
 * Runs the mirror section of ci-boot.sh with `cmdline` against a fresh root holding the image's templates;
 * `then`: shell run after it in the same shell (a restore's mirror step).
 */
function boot(cmdline: string, then = ''): { root: string; steps: string[]; code: number | null; stderr: string } {
  const root = mkdtempSync(join(tmpdir(), 'kiln-ciboot-'));
  dirs.push(root);
  const put = (p: string, content: string) => {
    mkdirSync(join(root, p, '..'), { recursive: true });
    writeFileSync(join(root, p), content);
  };
  for (const f of renderGuestMirrorConfigs({ address: MIRROR_PLACEHOLDER, fallbackToUpstream: true }).files) put(`/etc/kiln/mirror${f.path}`, f.content);
  const other = renderGuestRegistryMirror({ registry: REGISTRY_NAME_PLACEHOLDER, address: REGISTRY_ADDRESS_PLACEHOLDER });
  for (const f of other.files) put(`/etc/kiln/mirror-registry${f.path}`, f.content);
  put('/etc/kiln/mirror-registry.buildkitd.toml', other.buildkitdToml);
  put('/etc/hosts', '127.0.0.1\tlocalhost\n');
  put('/proc/cmdline', `${cmdline}\n`);
  const script = readFileSync(guestFile('ci-boot.sh'), 'utf8');
  const start = script.indexOf('mirror=\n');
  const end = script.indexOf("# Docker's daemons must not");
  assert.ok(start > 0 && end > start, 'the mirror section of ci-boot.sh is found');
  // Absolute guest paths become paths under the scratch root (the section runs from / in the guest).
  const section = script.slice(start, end).replace(/(["\s(>])\/(etc|proc)\//g, `$1${root}/$2/`).replace(/\$\{t%\/\*\}/g, `${root}\${t%/*}`).replace(/> "\$t"/g, `> "${root}$t"`);
  const r = spawnSync('busybox', ['sh', '-c', `step() { echo "STEP $*"; }\nset -e\n${section}\n${then}`], { encoding: 'utf8' });
  return { root, steps: r.stdout.split('\n').filter((l) => l.startsWith('STEP ')), code: r.status, stderr: r.stderr };
}

const read = (root: string, p: string) => readFileSync(join(root, p), 'utf8');

void test('ci boot: docker.io and two other registries configured from the command line, as the renderers say', () => {
  const b = boot('console=ttyS0 kiln.registry_mirror=10.0.2.100:5000 kiln.mirror.ghcr.io=10.0.2.101:5000 kiln.mirror.quay.io=10.0.2.102:5000 quiet');
  assert.equal(b.code, 0, b.stderr);
  assert.deepEqual(b.steps, ['STEP ci-mirror 10.0.2.100:5000', 'STEP ci-mirror ghcr.io 10.0.2.101:5000', 'STEP ci-mirror quay.io 10.0.2.102:5000']);
  const hub = renderGuestMirrorConfigs({ address: '10.0.2.100:5000', fallbackToUpstream: true });
  assert.equal(read(b.root, '/etc/containerd/certs.d/docker.io/hosts.toml'), hub.containerdHostsToml);
  assert.equal(read(b.root, '/etc/containers/registries.conf.d/50-kiln-mirror.conf'), hub.registriesConf);
  assert.deepEqual(JSON.parse(read(b.root, '/etc/docker/daemon.json')), { 'registry-mirrors': ['http://10.0.2.100:5000/'], 'insecure-registries': ['http://10.0.2.100:5000', 'http://ghcr.io', 'http://quay.io'] });
  let buildkit = hub.buildkitdToml;
  for (const [r, a] of [['ghcr.io', '10.0.2.101:5000'], ['quay.io', '10.0.2.102:5000']] as const) {
    const o = renderGuestRegistryMirror({ registry: r, address: a });
    for (const f of o.files) assert.equal(read(b.root, f.path), f.content, f.path);
    buildkit += o.buildkitdToml;
  }
  assert.equal(read(b.root, '/etc/buildkit/buildkitd.toml'), buildkit);
  assert.equal(read(b.root, '/etc/hosts'), '127.0.0.1\tlocalhost\n10.0.2.101\tghcr.io\n10.0.2.102\tquay.io\n');
});

void test('ci boot: another registry without a docker.io mirror gets a daemon.json of its own; no words, no files', () => {
  const b = boot('kiln.mirror.ghcr.io=10.0.2.101:5000');
  assert.equal(b.code, 0, b.stderr);
  assert.deepEqual(JSON.parse(read(b.root, '/etc/docker/daemon.json')), { 'insecure-registries': ['http://ghcr.io'] });
  assert.throws(() => read(b.root, '/etc/containerd/certs.d/docker.io/hosts.toml'));
  assert.match(read(b.root, '/etc/containerd/certs.d/ghcr.io/hosts.toml'), /\[host\."http:\/\/10\.0\.2\.101:5000"\]/);
  const none = boot('console=ttyS0 quiet');
  assert.equal(none.code, 0, none.stderr);
  assert.deepEqual(none.steps, []);
  assert.throws(() => read(none.root, '/etc/docker/daemon.json'));
  assert.equal(read(none.root, '/etc/hosts'), '127.0.0.1\tlocalhost\n');
});

void test('ci restore: the mirrors sent on kiln.ctl (MIRROR, MIRRORS) are configured exactly as the same kernel words are on a cold boot', () => {
  // A template boots without mirror words; the restored VM's hook gets them from kiln-init's variables.
  const words = { hub: '10.0.2.100:5000', others: 'ghcr.io=10.0.2.101:5000 quay.io=10.0.2.102:5000' };
  const warm = boot('console=ttyS0 quiet', `kiln_mirror='${words.hub}'; kiln_mirrors='${words.others}'; kiln_restore_mirrors`);
  assert.equal(warm.code, 0, warm.stderr);
  const cold = boot(`console=ttyS0 kiln.registry_mirror=${words.hub} ${words.others.split(' ').map((w) => `kiln.mirror.${w}`).join(' ')} quiet`);
  assert.equal(cold.code, 0, cold.stderr);
  assert.deepEqual(warm.steps, cold.steps);
  for (const p of ['/etc/docker/daemon.json', '/etc/buildkit/buildkitd.toml', '/etc/hosts', '/etc/containerd/certs.d/docker.io/hosts.toml', '/etc/containerd/certs.d/ghcr.io/hosts.toml', '/etc/containerd/certs.d/quay.io/hosts.toml', '/etc/containers/registries.conf.d/50-kiln-mirror.conf']) {
    assert.equal(read(warm.root, p), read(cold.root, p), p);
  }
  // Other registries alone (no docker.io mirror): daemon.json lists them as insecure registries.
  const only = boot('quiet', `kiln_mirror=; kiln_mirrors='ghcr.io=10.0.2.101:5000'; kiln_restore_mirrors`);
  assert.equal(only.code, 0, only.stderr);
  assert.deepEqual(JSON.parse(read(only.root, '/etc/docker/daemon.json')), { 'insecure-registries': ['http://ghcr.io'] });
});
