/**
 * The image versions a host holds reach the hosts API (and the dashboard's fleet page): an agent over a real
 * image store (the shared test store, with the minimal image built in it) reports every version in it.
 */
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { makeStoreImageResolver } from '../../src/agent/images.ts';
import { makeImageStore } from '../../src/image/store.ts';
import { ensureImage, SHARED_DIR } from '../support/kiln.ts';
import { startHarness, type Harness } from '../server/harness.ts';
import { until } from '../github/support/harness.ts';

let h: Harness | undefined;
after(() => h?.close());

test('an agent reports the image versions of its store; GET /v1/hosts lists them newest first, with their bytes', { timeout: 120_000 }, async () => {
  const built = ensureImage('amd64');
  const store = makeImageStore(SHARED_DIR);
  const expected = store.list().map((m) => ({ profile: m.profile, digest: m.digest, arch: m.arch, bytes: m.kernel.size + m.initrd.size + (m.rootDisk?.size ?? 0) }));
  assert.ok(expected.some((x) => x.digest === built.digest));
  h = await startHarness('pglite');
  await h.addAgent('imaged', {}, { images: makeStoreImageResolver(SHARED_DIR) });
  type Held = { profile: string; digest: string; arch: string; bytes?: number; created?: string };
  let images: Held[] | null | undefined;
  await until('the host lists its images', async () => {
    const { hosts } = await h!.client.request<{ hosts: { name: string; images?: Held[] | null }[] }>('GET', '/v1/hosts');
    images = hosts.find((x) => x.name === 'imaged')?.images;
    return Boolean(images);
  });
  assert.deepEqual(
    images!.map(({ profile, digest, arch, bytes }) => ({ profile, digest, arch, bytes })),
    expected.slice(0, 200),
  );
  assert.ok(images!.every((m) => typeof m.created === 'string'));
  // A host whose agent reports no images (the harness's static in-memory resolver lists nothing).
  await h.addAgent('bare');
  const { hosts } = await h.client.request<{ hosts: { name: string; images?: Held[] | null }[] }>('GET', '/v1/hosts');
  assert.equal(hosts.find((x) => x.name === 'bare')?.images ?? null, null);
});
