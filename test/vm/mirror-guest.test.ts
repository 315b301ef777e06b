// A real pull through the supervised per-host mirror from inside a real guest: a docker-registry plays Docker
// Hub, RegistryMirror runs the pull-through docker-registry in front of it, and a minimal guest (TCG) fetches
// the manifest and every blob from 10.0.2.100:5000, many requests at once, and checks each blob's sha256. The
// guest reaches the mirror through kiln's per-connection forward only: with the network closed, and with
// `network: user`, where the egress filter must let slirp's own loopback socket pair (made for each forwarded
// connection) through while the host's loopback (the mirror's and the upstream's ports at 10.0.2.2) stays
// refused.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { after, before, test } from 'node:test';
import { RegistryMirror } from '../../src/agent/mirror.ts';
import { makeImageStore } from '../../src/image/store.ts';
import { detectCgroups } from '../../src/vm/cgroups.ts';
import { chainFor, EGRESS_TABLE, egressProblem, egressVmNames } from '../../src/vm/egress.ts';
import { MIRROR_GUEST_ADDRESS, mirrorForward } from '../../src/vm/forwards.ts';
import { makeQemuDriver } from '../../src/vm/qemu-driver.ts';
import { Harness, freePort, type Registry } from '../oci/harness.ts';
import { isAlive } from '../../src/vm/process.ts';
import { assertNoLeaks, ensureImage, hasBinary, kilnArgs, makeTestDataDir, runKiln, SHARED_DIR } from '../support/kiln.ts';

const missing = ['docker-registry', 'buildah', 'socat'].filter((b) => !hasBinary(b));
const skip = missing.length > 0 ? `${missing.join(', ')} not installed (kiln setup --with-test-deps)` : false;
const egressMissing = egressProblem(detectCgroups().v2Root, readFileSync('/proc/mounts', 'utf8'));
const skipUser = skip || (egressMissing ? `guest egress cannot be filtered here: ${egressMissing}` : false);

const oci = new Harness();
const data = makeTestDataDir();
let hub: Registry;
let mirror: RegistryMirror;
let mirrorListen: string;
let manifestDigest: string;

before(async () => {
  if (skip) return;
  hub = await oci.startRegistry();
  const name = await oci.buildImage({ arch: 'amd64', bytes: 512 * 1024 });
  manifestDigest = await oci.buildahPush(name, `docker://${hub.host}/library/hello:1`, 'oci');
  mirrorListen = `127.0.0.1:${await freePort()}`;
  mirror = new RegistryMirror({ dataDir: await oci.tempDir('kiln-mirror-'), listen: mirrorListen, guestAddress: MIRROR_GUEST_ADDRESS, upstream: { url: hub.url }, cacheSizeMaxAgeMs: 0 });
  await mirror.start();
  await mirror.waitHealthy(15_000);
});

after(async () => {
  await mirror?.stop();
  await oci.cleanup();
  assert.deepEqual(oci.livePids(), []);
  data.cleanup();
});

/** Pulls hello:1's manifest (three at once) and every blob (all at once) through the mirror in a guest. */
async function pullInGuest(network: 'none' | 'user'): Promise<string> {
  const base = `http://${MIRROR_GUEST_ADDRESS}/v2/library/hello`;
  const accept = "--header 'Accept: application/vnd.oci.image.manifest.v1+json' --header 'Accept: application/vnd.docker.distribution.manifest.v2+json'";
  const refused = (name: string, url: string) => `if timeout 20 wget -q -O /dev/null ${url} 2>/dev/null; then echo "${name} open"; else echo "${name} refused"; fi`;
  const script = [
    'cd /tmp',
    // Three manifest requests at once, then every blob at once.
    `for i in 1 2 3; do timeout 60 wget -q -O m$i ${accept} ${base}/manifests/1 & done; wait`,
    'for i in 1 2 3; do echo "manifest $i $(sha256sum < m$i | cut -d" " -f1)"; done',
    `for d in $(grep -o 'sha256:[0-9a-f]*' m1 | sort -u); do timeout 60 wget -q -O "b-\${d#sha256:}" ${base}/blobs/$d & done; wait`,
    'for f in b-*; do echo "blob ${f#b-} $(sha256sum < $f | cut -d" " -f1) $(wc -c < $f)"; done',
    // The host's loopback: the mirror's own port and the upstream's, by the host's address.
    refused('host_mirror_port', `http://10.0.2.2:${mirrorListen.split(':')[1]}/v2/`),
    refused('host_upstream_port', `http://10.0.2.2:${hub.host.split(':')[1]}/v2/`),
  ].join('\n');
  const driver = makeQemuDriver({ dataDir: data.dir });
  let out = '';
  let err = '';
  const vm = await driver.start(
    {
      id: `mg-${randomBytes(4).toString('hex')}`,
      arch: 'amd64',
      cpus: 1,
      memoryBytes: 256 * 1024 * 1024,
      diskBytes: 64 * 1024 * 1024,
      image: makeImageStore(SHARED_DIR).toRef(ensureImage('amd64')),
      job: { command: ['sh', '-c', script], env: {} },
      timeoutMs: 240_000,
      network,
      forwards: [mirrorForward(mirrorListen)!],
      registryMirror: MIRROR_GUEST_ADDRESS,
    },
    { stdout: (b) => (out += b.toString()), stderr: (b) => (err += b.toString()) },
  );
  const r = await vm.done;
  assert.deepEqual(r.outcome === 'exited' ? r.exitCode : r, 0, out + err);
  for (const i of [1, 2, 3]) assert.match(out, new RegExp(`^manifest ${i} ${manifestDigest.slice(7)}$`, 'm'), out);
  const blobs = [...out.matchAll(/^blob ([0-9a-f]{64}) ([0-9a-f]{64}) (\d+)$/gm)];
  assert.ok(blobs.length >= 2, `the config and at least one layer came through: ${out}`);
  for (const [, want, got, size] of blobs) {
    assert.equal(got, want, 'the blob the guest got has the digest it asked for');
    assert.ok(Number(size) > 0);
  }
  assert.match(out, /^host_mirror_port refused$/m, out);
  assert.match(out, /^host_upstream_port refused$/m, out);
  assert.deepEqual(egressVmNames().names.filter((n) => n.startsWith(vm.id)), [], 'the VM left no egress chain behind');
  assertNoLeaks(data.dir);
  return out;
}

void test('a guest with the network closed pulls an image through the mirror at 10.0.2.100:5000, requests in parallel', { skip, timeout: 300_000 }, async () => {
  await pullInGuest('none');
});

void test('a guest with network user pulls through the mirror the same way, and the host loopback stays refused', { skip: skipUser, timeout: 300_000 }, async () => {
  await pullInGuest('user');
});

/** The comments of the input-hook rules of the egress table (each names its VM's chain). */
function inputRuleComments(): string[] {
  const r = spawnSync('nft', ['-j', 'list', 'chain', 'inet', EGRESS_TABLE, 'input'], { encoding: 'utf8' });
  if (r.status !== 0) return [];
  const j = JSON.parse(r.stdout) as { nftables: { rule?: { comment?: string } }[] };
  return j.nftables.flatMap((i) => (i.rule?.comment ? [i.rule.comment] : []));
}

void test('SIGKILL of kiln while a network-user VM uses the mirror: the next kiln start removes its chain and input rules', { skip: skipUser, timeout: 300_000 }, async () => {
  const before = new Set(egressVmNames().names);
  const digest = ensureImage('amd64').digest;
  const p = spawn(
    process.execPath,
    kilnArgs(data.dir, ['run', '--image', digest, '--cold', '--network', 'user', '--registry-mirror', mirrorListen, '--', 'sh', '-c', `wget -q -O /dev/null http://${MIRROR_GUEST_ADDRESS}/v2/ && echo started; sleep 600`]),
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let stderr = '';
  p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const closed = new Promise((resolve) => p.on('close', resolve));
  const started = await new Promise<boolean>((resolve) => {
    p.stdout.on('data', (d: Buffer) => d.toString().includes('started') && resolve(true));
    void closed.then(() => resolve(false));
  });
  assert.ok(started, `the guest reached the mirror: ${stderr}`);
  const mine = egressVmNames().names.filter((n) => !before.has(n) && n.startsWith('run-'));
  assert.equal(mine.length, 1, `one new VM chain: ${mine.join(', ')}`);
  const chain = chainFor(mine[0]!);
  assert.equal(inputRuleComments().filter((c) => c === chain).length, 4, 'the VM has its input rules');
  const qemuPid = Number(readFileSync(`${data.dir}/vms/${mine[0]!.split('.')[0]!}/qemu.pid`, 'utf8'));
  p.kill('SIGKILL');
  await closed;
  for (let i = 0; i < 500 && isAlive(qemuPid); i++) await new Promise((r) => setTimeout(r, 10));
  assert.equal(isAlive(qemuPid), false, 'QEMU died with kiln');
  assert.ok(egressVmNames().names.includes(mine[0]!), 'the killed kiln could not remove its chain');
  const r = await runKiln(data.dir, ['run', '--image', digest, '--', 'true']);
  assert.equal(r.code, 0, r.stderr.toString());
  assert.match(r.stderr.toString(), /removed 1 VM\(s\) an earlier kiln left behind/);
  assert.equal(egressVmNames().names.includes(mine[0]!), false, 'the sweep removed the chain');
  assert.deepEqual(inputRuleComments().filter((c) => c === chain), [], 'and its input rules');
  assertNoLeaks(data.dir);
});
