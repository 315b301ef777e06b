/**
 * The ci image's use of a warm cache (docs/caches.md, "Tool caches in the ci image"), in a real VM: with
 * `/cache` mounted, Docker's data root lives there, so an image a trusted job builds is still in Docker in
 * the next job of the same cache; a job without the cache does not see it. The image is built in the guest
 * (FROM scratch, no registry or network needed), the legacy builder's layers stored like a pulled image's.
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
  // The topmost mount at /var/lib/docker (the scratch disk's may lie under it) is /cache's file system.
  `awk '$2 == "/cache" { c = $1 } $2 == "/var/lib/docker" { d = $1 } END { print (c != "" && c == d) ? "bound" : "not bound: " d }' /proc/mounts`,
  'cat /root/.npmrc',
  'mkdir -p /tmp/b && cd /tmp/b && echo kiln-cache-probe > f',
  "printf 'FROM scratch\\nCOPY f /f\\n' > Dockerfile",
  'docker build -q -t kiln-probe:1 . > /dev/null',
  "docker image inspect -f '{{.Id}}' kiln-probe:1",
].join('; ');
const INSPECT = "docker image inspect -f '{{.Id}}' kiln-probe:1";

test('ci image: Docker keeps its data in the cache, so an image a trusted job built is there in the next job of that cache only', { timeout: 30 * 60_000 }, async () => {
  const first = await run(['--cache', 'docker-data', '--cache-size', '1G', '--', 'sh', '-c', BUILD]);
  assert.equal(first.code, 0, first.stderr.toString());
  const [binds, npmrc, id] = first.stdout.toString().trim().split('\n');
  assert.equal(binds, 'bound', "Docker's data root is bound to /cache");
  assert.equal(npmrc, 'cache=/cache/npm', "npm's cache points into /cache");
  assert.match(id ?? '', /^sha256:[0-9a-f]{64}$/);
  assert.match(first.stderr.toString(), /cache docker-data: saved as version/);
  assert.ok(makeCacheStore(data.dir).inspect('docker-data')?.current, 'the cache has a committed version');

  const next = await run(['--cache', 'docker-data', '--', 'sh', '-c', INSPECT]);
  assert.equal(next.code, 0, next.stderr.toString());
  assert.equal(next.stdout.toString().trim(), id, 'the image built by the previous job is in Docker');

  const without = await run(['--', 'sh', '-c', `${INSPECT} || echo absent`]);
  assert.equal(without.code, 0, without.stderr.toString());
  assert.equal(without.stdout.toString().trim().split('\n').pop(), 'absent', 'a job without the cache starts with an empty Docker');
});
