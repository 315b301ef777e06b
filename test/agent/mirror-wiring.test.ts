/**
 * The per-host registry mirror wired end to end: a docker-registry plays Docker Hub; a real `kiln agent`
 * process (memory driver) runs the supervised mirror in front of it and reports it; the server stores it and
 * shows it in the hosts API, `kiln hosts ls` and /metrics; skopeo pulls through it; a killed mirror is
 * restarted and reported. An in-process agent shows every launched VM gets the forward and the address.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { MIRROR_GUEST_ADDRESS, MIRROR_GUEST_IP, MIRROR_GUEST_PORT } from '../../src/agent/agent.ts';
import { RegistryMirror } from '../../src/agent/mirror.ts';
import type { Host } from '../../src/core/host.ts';
import type { Job } from '../../src/core/job.ts';
import type { VmDriver, VmSpec } from '../../src/vm/driver.ts';
import { makeMemoryDriver } from '../../src/vm/memory-driver.ts';
import { Harness as OciHarness, freePort, skopeo, waitFor, type Registry } from '../oci/harness.ts';
import { jobReaches, startHarness, type Harness } from '../server/harness.ts';
import { killAll, runKilnCommand, spawnKiln, type KilnProcess } from './processes.ts';

const oci = new OciHarness();
let hub: Registry;
let h: Harness;

const kiln = runKilnCommand;

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

async function hostNamed(name: string): Promise<Host> {
  const { hosts } = await h.client.request<{ hosts: Host[] }>('GET', '/v1/hosts');
  const host = hosts.find((x) => x.name === name);
  assert.ok(host, `host ${name} is listed`);
  return host;
}

async function metrics(): Promise<string> {
  const r = await fetch(`${h.url}/metrics`, { headers: { authorization: `Bearer ${h.admin}` } });
  assert.equal(r.status, 200);
  return r.text();
}

void describe('registry mirror wiring', () => {
  before(async () => {
    hub = await oci.startRegistry();
    const name = await oci.buildImage({ arch: 'amd64', bytes: 256 * 1024 });
    await oci.buildahPush(name, `docker://${hub.host}/library/hello:1`, 'oci');
    h = await startHarness('pglite');
  });
  after(async () => {
    await h?.close();
    await killAll();
    await oci.cleanup();
    assert.deepEqual(oci.livePids(), []);
  });

  void test('every VM an agent launches gets the mirror forward and address; hello reports the mirror', { timeout: 60_000 }, async () => {
    const specs: VmSpec[] = [];
    const inner = makeMemoryDriver({ arches: ['amd64', 'arm64'] });
    // A recording decorator around the real memory driver (it keeps no specs of its own).
    const driver: VmDriver = {
      name: inner.name,
      capabilities: () => inner.capabilities(),
      list: () => inner.list(),
      sweep: () => inner.sweep(),
      start: (spec, out) => {
        specs.push(structuredClone(spec));
        return inner.start(spec, out);
      },
    };
    const listen = `127.0.0.1:${await freePort()}`;
    const mirror = new RegistryMirror({ dataDir: await oci.tempDir('kiln-agent-data-'), listen, guestAddress: MIRROR_GUEST_ADDRESS, upstream: { url: hub.url } });
    const agent = await h.addAgent('spec-host', { arches: ['amd64', 'arm64'] }, { driver, mirror, labels: ['mirror-spec'] });
    const host = await hostNamed('spec-host');
    assert.equal(host.mirror?.healthy, true, 'hello carried a healthy mirror');
    assert.equal(host.mirror?.address, listen);
    assert.equal(host.mirror?.guestAddress, MIRROR_GUEST_ADDRESS);

    for (const network of ['none', 'user'] as const) {
      const job = await h.client.request<Job>('POST', '/v1/jobs', { command: ['true'], labels: ['mirror-spec'], network });
      await jobReaches(h, job.id, ['succeeded']);
    }
    assert.equal(specs.length, 2);
    const port = Number(listen.split(':')[1]);
    for (const s of specs) {
      assert.deepEqual(s.forwards, [{ guestAddr: MIRROR_GUEST_IP, guestPort: MIRROR_GUEST_PORT, hostPort: port }]);
      assert.equal(s.registryMirror, MIRROR_GUEST_ADDRESS);
      assert.equal(JSON.stringify(s).includes('password'), false);
    }
    assert.deepEqual(
      specs.map((s) => s.network),
      ['none', 'user'],
    );
    const pid = (await mirror.status()).pid;
    assert.ok(pid);
    await agent.stop();
    h.agents.splice(h.agents.indexOf(agent), 1);
    assert.equal((await mirror.status()).state, 'stopped', 'the agent stops its mirror');
    assert.equal(alive(pid), false);
  });

  void test('a kiln agent with --mirror-upstream: reported healthy, fills its cache, shows in hosts ls and /metrics, restarted when killed', { timeout: 90_000 }, async () => {
    const dataDir = await oci.tempDir('kiln-agent-data-');
    const listen = `127.0.0.1:${await freePort()}`;
    const agent: KilnProcess = spawnKiln(
      ['agent', '--server', h.url, '--token', h.agentToken, '--name', 'mirror-host', '--driver', 'memory', '--data-dir', dataDir, '--mirror-upstream', hub.url, '--mirror-listen', listen],
      { KILN_LOG_LEVEL: 'info', KILN_MIRROR_STATUS_INTERVAL: '1s', KILN_MIRROR_USERNAME: 'hub-user', KILN_MIRROR_PASSWORD: 'hub-secret-pw' },
    );
    try {
      await agent.waitForOutput(/connected to the fleet as host \d+/, 45_000);
      await waitFor(async () => (await hostNamed('mirror-host')).mirror?.healthy === true, 20_000, 'the mirror to be reported healthy');
      const first = (await hostNamed('mirror-host')).mirror!;
      assert.equal(first.address, listen);
      assert.equal(first.upstream, hub.url);
      assert.equal(first.guestAddress, MIRROR_GUEST_ADDRESS);
      assert.ok(first.pid);
      assert.equal(JSON.stringify(first).includes('hub-secret-pw'), false, 'status never carries credentials');
      assert.match(agent.output(), /"password":"\[redacted\]"/, 'the start-up config log redacts the mirror password');
      assert.equal(agent.output().includes('hub-secret-pw'), false, 'the password is never logged');

      const env = { KILN_SERVER: h.url, KILN_TOKEN: h.admin };
      let r = await kiln(['hosts', 'ls'], env);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /MIRROR/);
      assert.match(r.stdout, /mirror-host .* healthy \d/);

      // Pull through the mirror; its cache grows by at least the layer, and the report follows.
      const layout = await oci.tempDir('kiln-pull-');
      await skopeo(['copy', '-q', '--src-tls-verify=false', `docker://${listen}/library/hello:1`, `oci:${layout}:x`]);
      await waitFor(async () => ((await hostNamed('mirror-host')).mirror?.cacheBytes ?? 0) >= first.cacheBytes + 256 * 1024, 20_000, 'the reported cache to grow');
      const grown = (await hostNamed('mirror-host')).mirror!;
      const m = await metrics();
      assert.match(m, /kiln_host_mirror_healthy\{host="mirror-host"\} 1/);
      const bytes = /kiln_host_mirror_cache_bytes\{host="mirror-host"\} (\d+)/.exec(m);
      assert.ok(bytes, m.split('\n').filter((l) => l.includes('mirror')).join('\n'));
      assert.ok(Number(bytes[1]) >= first.cacheBytes + 256 * 1024);
      assert.doesNotMatch(m, /kiln_host_mirror_healthy\{host="spec-host"\} 1/, 'a host whose agent left is not reported healthy');

      // Kill the registry: the agent restarts it and reports the restart, healthy again.
      process.kill(grown.pid!, 'SIGKILL');
      await waitFor(
        async () => {
          const now = (await hostNamed('mirror-host')).mirror;
          return now !== null && now.restarts >= 1 && now.healthy && now.pid !== grown.pid && now.lastExit?.signal === 'SIGKILL';
        },
        20_000,
        'the killed mirror to be restarted and reported',
      );
      assert.equal(alive(grown.pid!), false);
      r = await kiln(['hosts', 'ls', '--json'], env);
      assert.equal(r.code, 0, r.stderr);
      const listed = (JSON.parse(r.stdout) as Host[]).find((x) => x.name === 'mirror-host');
      assert.ok((listed?.mirror?.restarts ?? 0) >= 1);

      const last = (await hostNamed('mirror-host')).mirror!;
      await agent.kill('SIGTERM');
      await waitFor(() => !alive(last.pid!), 10_000, 'the mirror to stop with its agent');
    } finally {
      await agent.kill('SIGKILL');
    }
  });
});
