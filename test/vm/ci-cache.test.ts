/**
 * The ci image's use of a warm cache (docs/caches.md, "Tool caches in the ci image"), in a real VM: with
 * `/cache` mounted, Docker's data root lives there, so an image a trusted job builds is still in Docker in
 * the next job of the same cache; a job without the cache does not see it. The image is built in the guest
 * (FROM scratch, no registry or network needed), the legacy builder's layers stored like a pulled image's.
 * The jobs run warm (restored from a snapshot with a cache slot, whose restore hook binds Docker's data into
 * /cache and restarts the daemons behind a held socket) and once cold (--cold), and both ways must hold.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import type { ImageManifest } from '../../src/image/store.ts';
import { makeCacheStore } from '../../src/vm/cache-store.ts';
import { assertNoLeaks, makeTestDataDir, runKiln } from '../support/kiln.ts';
import { ensureCiImage } from './ci-image-support.ts';

const data = makeTestDataDir();
let image: ImageManifest;
const shape = ['--cpus', '2', '--memory', '1G', '--disk', '2G', '--timeout', '10m'];
const run = (args: string[]) => runKiln(data.dir, ['run', '--image', image.digest, ...shape, ...args], { KILN_BOOT_TIMEOUT: '10m' });

before(() => {
  image = ensureCiImage('amd64');
});
after(() => {
  assertNoLeaks(data.dir);
  data.cleanup();
});

const BUILD = [
  'set -e',
  // At the job's first command the docker socket listens (a warm start's holder made it, or dockerd): a client
  // never meets the killed dockerd's file, which refuses it. /proc/net/unix names the socket as it was bound.
  `awk '$NF ~ /^\\/var\\/run\\/docker\\.sock(\\.kiln-new)?$/ && $4 == "00010000" { n++ } END { print n ? "listening" : "not listening" }' /proc/net/unix`,
  // Whether dockerd already served when the job started (a warm start restarts it behind the job).
  "grep -q -e 'API listen on' -e 'Daemon has completed initialization' /run/dockerd.log && echo docker-up || echo docker-starting",
  // The topmost mount at /var/lib/docker (the scratch disk's may lie under it) is /cache's file system.
  `awk '$2 == "/cache" { c = $1 } $2 == "/var/lib/docker" { d = $1 } END { print (c != "" && c == d) ? "bound" : "not bound: " d }' /proc/mounts`,
  'cat /root/.npmrc',
  'mkdir -p /tmp/b && cd /tmp/b && echo kiln-cache-probe > f',
  "printf 'FROM scratch\\nCOPY f /f\\n' > Dockerfile",
  'docker build -q -t kiln-probe:1 . > /dev/null',
  "docker image inspect -f '{{.Id}}' kiln-probe:1",
].join('; ');
const INSPECT = "docker image inspect -f '{{.Id}}' kiln-probe:1";

const WARM = /warm start: restored from a snapshot/;

test('ci image: Docker keeps its data in the cache, so an image a trusted job built is there in the next job of that cache only', { timeout: 30 * 60_000 }, async () => {
  const first = await run(['-v', '--cache', 'docker-data', '--cache-size', '1G', '--', 'sh', '-c', BUILD]);
  assert.equal(first.code, 0, first.stderr.toString());
  assert.match(first.stderr.toString(), WARM, 'a ci job with a cache starts warm');
  const [listening, started, binds, npmrc, id] = first.stdout.toString().trim().split('\n');
  assert.equal(listening, 'listening', 'the docker socket listened when the job began');
  // Under TCG dockerd's restart takes seconds; the job began before it served, and its docker build waited.
  assert.equal(started, 'docker-starting', 'the job did not wait for the restarted dockerd');
  assert.equal(binds, 'bound', "Docker's data root is bound to /cache");
  assert.equal(npmrc, 'cache=/cache/npm', "npm's cache points into /cache");
  assert.match(id ?? '', /^sha256:[0-9a-f]{64}$/);
  assert.match(first.stderr.toString(), /cache docker-data: saved as version/);
  assert.ok(makeCacheStore(data.dir).inspect('docker-data')?.current, 'the cache has a committed version');

  // A job shorter than dockerd's restart (10-14 s under TCG) still has its cache saved: the after-job hook kills
  // a dockerd that never served instead of waiting for it to finish starting. Docker's data stays whole (next).
  const short = await run(['-v', '--cache', 'docker-data', '--', 'true']);
  assert.equal(short.code, 0, short.stderr.toString());
  assert.match(short.stderr.toString(), WARM);
  assert.match(short.stderr.toString(), /cache docker-data: saved as version/, short.stderr.toString());
  assert.doesNotMatch(short.stderr.toString(), /still in use|dockerd did not come back/, short.stderr.toString());

  const next = await run(['-v', '--cache', 'docker-data', '--', 'sh', '-c', INSPECT]);
  assert.equal(next.code, 0, next.stderr.toString());
  assert.match(next.stderr.toString(), WARM);
  assert.equal(next.stdout.toString().trim(), id, 'the image built by the previous job is in Docker');

  const cold = await run(['-v', '--cold', '--cache', 'docker-data', '--', 'sh', '-c', INSPECT]);
  assert.equal(cold.code, 0, cold.stderr.toString());
  assert.match(cold.stderr.toString(), /cold start: booted/);
  assert.equal(cold.stdout.toString().trim(), id, 'a cold boot binds the same data');

  const without = await run(['-v', '--', 'sh', '-c', `${INSPECT} || echo absent`]);
  assert.equal(without.code, 0, without.stderr.toString());
  assert.match(without.stderr.toString(), WARM);
  assert.equal(without.stdout.toString().trim().split('\n').pop(), 'absent', 'a job without the cache starts with an empty Docker');
});
