/**
 * Warm starts of the ci image end to end: the real CLI, real QEMU (TCG here), Docker in the guest. One
 * template build (the first run); every VM after it is a restore. Each restored VM must have its own Docker
 * engine ID and RNG output, its registry mirror (sent after the restore, not on the kernel command line), and
 * its own forward to the host at 10.0.2.100:5000.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { ImageManifest } from '../../src/image/store.ts';
import { makeSnapshotStore } from '../../src/vm/snapshot-store.ts';
import { assertNoLeaks, makeTestDataDir, runKiln } from '../support/kiln.ts';
import { ensureCiImage } from './ci-image-support.ts';

const data = makeTestDataDir();
let image: ImageManifest;
let server: Server;
let port = 0;
const seen: string[] = [];

before(async () => {
  image = ensureCiImage('amd64');
  // What answers at the guest's 10.0.2.100:5000: each request says which VM's forward it came through.
  server = createServer((req, res) => {
    seen.push(req.url ?? '');
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ path: req.url }));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  port = (server.address() as AddressInfo).port;
});
after(async () => {
  await new Promise((r) => server.close(r));
  assertNoLeaks(data.dir);
  data.cleanup();
});

/** Lines: urandom bytes, Docker's engine ID, its mirrors, the forward's answer, the hostname. */
const PROBE = [
  'head -c 16 /dev/urandom | od -An -tx1 | tr -d " \\n"; echo',
  "docker info -f '{{.ID}}'",
  "docker info -f '{{json .RegistryConfig.Mirrors}}'",
  'curl -s --max-time 20 http://10.0.2.100:5000/v2/$(hostname); echo',
  'hostname',
].join('; ');

// The boot limit (template included) is raised: on a loaded 2-core machine the ci image's cold boot under TCG
// has taken over the default 180 s.
const run = (extra: string[] = [], script = PROBE) =>
  runKiln(
    data.dir,
    ['run', '-v', '--image', image.digest, '--cpus', '2', '--memory', '1G', '--disk', '2G', '--timeout', '15m', '--registry-mirror', `127.0.0.1:${port}`, ...extra, '--', 'sh', '-c', script],
    { KILN_BOOT_TIMEOUT: '10m' },
  );

/**
 * Container networking as a job uses it: a network of its own (name resolution between its containers), a
 * published port reached at the guest's own address, and the outside (this test's server, through the VM's
 * forward) from that network and from the default bridge. A restored VM's dockerd runs without iptables
 * (ci-boot.sh), so this is what must come out the same warm as cold.
 */
const NET_PROBE = [
  'set -e',
  'mkdir -p /work/ctx/www && cp /bin/busybox /work/ctx/ && echo web-answers > /work/ctx/www/index.html',
  "printf 'FROM scratch\\nCOPY busybox /bin/busybox\\nCOPY www /www\\n' > /work/ctx/Dockerfile",
  'docker build -q -t kiln-net-probe /work/ctx > /dev/null',
  'docker network create kiln-probe > /dev/null',
  'docker run -d --network kiln-probe --name web kiln-net-probe /bin/busybox httpd -f -p 80 -h /www > /dev/null',
  'docker run -d -p 8080:80 --name pub kiln-net-probe /bin/busybox httpd -f -p 80 -h /www > /dev/null',
  'me=$(ip -4 -o addr show eth0 | sed -n "s/.* inet \\([0-9.]*\\).*/\\1/p")',
  'echo "by-name=$(docker run --rm --network kiln-probe kiln-net-probe /bin/busybox wget -qO- http://web/)"',
  'echo "published=$(curl -s --max-time 20 http://$me:8080/)"',
  'echo "out-own-network=$(docker run --rm --network kiln-probe kiln-net-probe /bin/busybox wget -qO- http://10.0.2.100:5000/v2/own)"',
  'echo "out-default=$(docker run --rm kiln-net-probe /bin/busybox wget -qO- http://10.0.2.100:5000/v2/default)"',
].join('\n');
const NET_EXPECTED = ['by-name=web-answers', 'published=web-answers', `out-own-network=${JSON.stringify({ path: '/v2/own' })}`, `out-default=${JSON.stringify({ path: '/v2/default' })}`];

test('ci image: two VMs restored from one snapshot have different Docker engine ids and RNG output; each gets the mirror and its own forward', { timeout: 20 * 60_000 }, async () => {
  const first = await run();
  assert.equal(first.code, 0, first.stderr.toString());
  assert.match(first.stderr.toString(), /building a warm-start snapshot of image/);
  assert.match(first.stderr.toString(), /warm start: restored from a snapshot/);
  const snaps = makeSnapshotStore(data.dir).list();
  assert.equal(snaps.length, 1);
  assert.deepEqual(Object.keys(snaps[0]!.files).sort(), ['ram', 'root.qcow2', 'scratch.qcow2', 'state']);

  const [a, b] = await Promise.all([run(), run()]);
  const outs = [first, a, b].map((r) => {
    assert.equal(r.code, 0, r.stderr.toString());
    assert.match(r.stderr.toString(), /warm start: restored from a snapshot/);
    const lines = r.stdout.toString().trim().split('\n');
    assert.equal(lines.length, 5, r.stdout.toString());
    return lines;
  });
  const [o1, o2, o3] = outs as [string[], string[], string[]];
  assert.match(o2[0]!, /^[0-9a-f]{32}$/);
  assert.notEqual(o2[0], o3[0], 'the two restored VMs read the same bytes from /dev/urandom');
  assert.ok(o2[1] && o2[1].length > 10, `docker info printed no ID: ${o2[1]}`);
  assert.equal(new Set([o1[1], o2[1], o3[1]]).size, 3, `Docker engine ids repeat: ${o1[1]} ${o2[1]} ${o3[1]}`);
  for (const o of outs) {
    // The mirror was sent after the restore (the template had none) and dockerd read it when it restarted.
    assert.equal(o[2], '["http://10.0.2.100:5000/"]');
    // The forward reached this test's server through this VM's own relay.
    assert.equal(o[3], JSON.stringify({ path: `/v2/${o[4]}` }));
  }
  assert.equal(new Set(outs.map((o) => o[4])).size, 3, 'hostnames repeat');
  assert.equal(seen.length, 3);
});

test('ci image: --cold still boots, and reads the mirror from the kernel command line', { timeout: 10 * 60_000 }, async () => {
  const r = await run(['--cold']);
  assert.equal(r.code, 0, r.stderr.toString());
  assert.match(r.stderr.toString(), /cold start: booted/);
  const lines = r.stdout.toString().trim().split('\n');
  assert.equal(lines[2], '["http://10.0.2.100:5000/"]', 'a cold boot reads the mirror from the kernel command line');
});

test('ci image: container networks, name resolution, published ports and NAT work the same in a restored VM as in a cold one', { timeout: 20 * 60_000 }, async () => {
  const warm = await run([], NET_PROBE);
  assert.equal(warm.code, 0, `${warm.stdout.toString()}\n${warm.stderr.toString()}`);
  assert.match(warm.stderr.toString(), /warm start: restored from a snapshot/);
  assert.deepEqual(warm.stdout.toString().trim().split('\n'), NET_EXPECTED, warm.stderr.toString());
  const cold = await run(['--cold'], NET_PROBE);
  assert.equal(cold.code, 0, `${cold.stdout.toString()}\n${cold.stderr.toString()}`);
  assert.match(cold.stderr.toString(), /cold start: booted/);
  assert.deepEqual(cold.stdout.toString().trim().split('\n'), NET_EXPECTED, cold.stderr.toString());
});
