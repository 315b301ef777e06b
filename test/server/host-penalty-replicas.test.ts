// Host penalties are read from the store, so they hold on every replica: a host whose launch failed through
// one replica is de-preferred by another once the host's agent has moved there (before, each replica kept the
// penalties of the hosts it held in its own memory, and lost them when a host moved).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { makeServer, type KilnServer } from '../../src/server/server.ts';
import { openStore } from '../../src/store/store.ts';
import { createToken, makeSecret } from '../../src/store/tokens.ts';
import { makeAgent, type Agent } from '../../src/agent/agent.ts';
import { memoryImageResolver, type ImageResolver } from '../../src/agent/images.ts';
import { makeMemoryDriver } from '../../src/vm/memory-driver.ts';
import { KilnError } from '../../src/core/errors.ts';
import type { Job } from '../../src/core/job.ts';
import { makeApiClient } from '../support/test-client.ts';
import { makeTestStore, testDatabaseUrl } from '../store/test-stores.ts';
import { quietLogger } from './harness.ts';
import { until } from '../github/support/harness.ts';

const skip = testDatabaseUrl ? false : 'needs PostgreSQL (KILN_TEST_DATABASE_URL)';

void test('a launch failure through replica A de-prefers the host on replica B after the host moves there', { skip, timeout: 120_000 }, async () => {
  const first = await makeTestStore('postgres');
  const second = await openStore({ databaseUrl: first.url!, poolSize: 5 });
  const admin = makeSecret('admin');
  const servers: KilnServer[] = [];
  const agents: Agent[] = [];
  let aClosed = false;
  try {
    for (const store of [first, second]) servers.push(await makeServer({ store, logger: quietLogger(), adminToken: admin, options: { pollMs: 100, heartbeatMs: 1000 }, leaderIntervalMs: 100 }));
    const urls = await Promise.all(servers.map((s) => s.listen({ host: '127.0.0.1', port: 0 })));
    const [a, b] = urls.map((server) => makeApiClient({ server, token: admin }));
    const { secret } = await createToken(first.db, { name: 'agents', role: 'agent' });
    // host-1 is the tighter fit (placement's choice between the two) but has no image "app": launches fail.
    const noApp: ImageResolver = async (image, arch) => {
      if (image === 'app') throw new KilnError('image.not_found', 'no image "app" on this host');
      return memoryImageResolver(image, arch);
    };
    for (const [name, cpus, images] of [
      ['host-1', 4, noApp],
      ['host-2', 64, memoryImageResolver],
    ] as const) {
      const agent = makeAgent({ servers: urls, token: secret, name, driver: makeMemoryDriver({ arches: ['amd64'], cpus, memoryBytes: cpus * 2 * 1024 ** 3 }), images, logger: quietLogger(), minBackoffMs: 50, maxBackoffMs: 300, arch: 'amd64' });
      agents.push(agent);
      const c = agent.connected(60_000);
      await agent.start();
      await c;
    }
    const idOf = async () => new Map((await b!.request<{ hosts: { id: number; name: string; state: string; serverId: string | null }[] }>('GET', '/v1/hosts')).hosts.map((x) => [x.name, x]));
    const { serverId: idA } = (await (await fetch(`${urls[0]}/healthz`)).json()) as { serverId: string };
    const { serverId: idB } = (await (await fetch(`${urls[1]}/healthz`)).json()) as { serverId: string };
    await until('both hosts on replica A', async () => [...(await idOf()).values()].filter((x) => x.state === 'online' && x.serverId === idA).length === 2, 30_000);
    const hosts = await idOf();

    // Through A: the job goes to host-1 and fails there.
    const one = await a!.request<Job>('POST', '/v1/jobs', { image: 'app', command: ['true'], cpus: 1 });
    await until('the first job failed', async () => (await a!.request<Job>('GET', `/v1/jobs/${one.id}`)).state === 'failed', 30_000);
    const failed = await a!.request<Job>('GET', `/v1/jobs/${one.id}`);
    assert.equal(failed.hostId, hosts.get('host-1')!.id);
    assert.equal(failed.error?.code, 'image.not_found');

    // A goes away; both agents move to B, which never saw the failure happen.
    await servers[0]!.close();
    aClosed = true;
    await until('both hosts on replica B', async () => [...(await idOf()).values()].filter((x) => x.state === 'online' && x.serverId === idB).length === 2, 60_000);

    // Through B: host-1 is still de-preferred, so the job runs on host-2.
    const two = await b!.request<Job>('POST', '/v1/jobs', { image: 'app', command: ['true'], cpus: 1 });
    await until('the second job ended', async () => ['succeeded', 'failed'].includes((await b!.request<Job>('GET', `/v1/jobs/${two.id}`)).state), 30_000);
    const done = await b!.request<Job>('GET', `/v1/jobs/${two.id}`);
    assert.deepEqual([done.state, done.hostId], ['succeeded', hosts.get('host-2')!.id]);
  } finally {
    for (const x of agents) await x.stop();
    for (const [i, s] of servers.entries()) if (i > 0 || !aClosed) await s.close();
    await second.close();
    await first.close();
  }
});
