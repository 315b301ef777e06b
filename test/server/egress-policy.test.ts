// Guest egress allowlists per tenant and per GitHub repository: set by an admin through the API, resolved at
// placement and delivered to the agent with the launch, reaching the VM driver as the VM's egress allowlist
// (which the QEMU driver turns into nftables rules, src/vm/egress.ts).
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { storeKinds } from '../store/test-stores.ts';
import { startHarness, jobReaches, type Harness } from './harness.ts';
import { makeApiClient } from '../support/test-client.ts';
import { makeMemoryDriver } from '../../src/vm/memory-driver.ts';
import type { VmDriver, VmSpec } from '../../src/vm/driver.ts';
import { insertJobs } from '../../src/store/jobs.ts';
import { DEFAULT_REQUIREMENTS } from '../../src/core/requirements.ts';

/** The real in-memory driver, noting each VM's spec as the agent hands it over. */
function recordingDriver(seen: Map<string, VmSpec>): VmDriver {
  const d = makeMemoryDriver({});
  return { name: d.name, capabilities: () => d.capabilities(), list: () => d.list(), sweep: () => d.sweep(), start: (spec, out) => (seen.set(spec.id, spec), d.start(spec, out)) };
}

for (const { kind, skip } of storeKinds()) {
  void describe(`egress allowlists per tenant and repository on ${kind}`, { skip }, () => {
    let h: Harness;
    const seen = new Map<string, VmSpec>();
    before(async () => {
      h = await startHarness(kind);
      await h.addAgent('egress-host', {}, { driver: recordingDriver(seen) });
    });
    after(async () => {
      await h?.close();
    });

    void test('an admin sets them; bad entries and other roles are refused', async () => {
      const put = (path: string, allow: string[], token = h.admin) =>
        fetch(`${h.url}${path}`, { method: 'PUT', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: JSON.stringify({ allow }) });
      assert.equal((await put('/v1/egress/tenants/alice', ['198.51.100.0/24', 'Pkg.Example.com', '198.51.100.0/24'])).status, 200);
      assert.equal((await put('/v1/egress/repos/Acme/App', ['10.9.0.0/16'])).status, 200);
      assert.equal((await put('/v1/egress/tenants/github', ['10.1.2.3'])).status, 200);
      const bad = await put('/v1/egress/tenants/alice', ['10.0.0.0/33']);
      assert.equal(bad.status, 400);
      assert.match(await bad.text(), /input\.bad_egress_allow/);
      const op = (await h.client.request<{ secret: string }>('POST', '/v1/tokens', { name: 'op', role: 'operator', tenant: 'alice' })).secret;
      assert.equal((await put('/v1/egress/tenants/alice', ['0.0.0.0/0'], op)).status, 403, 'a tenant cannot open its own egress');
      const { policies } = await h.client.request<{ policies: { kind: string; scope: string; allow: string[] }[] }>('GET', '/v1/egress');
      assert.deepEqual(
        policies.map((p) => [p.kind, p.scope, p.allow]),
        [
          ['repo', 'acme/app', ['10.9.0.0/16']],
          ['tenant', 'alice', ['198.51.100.0/24', 'pkg.example.com']],
          ['tenant', 'github', ['10.1.2.3/32']],
        ],
      );
    });

    void test("each job's VM gets its tenant's list, a runner VM its repository's too; others get none", async () => {
      const mk = async (tenant: string) => makeApiClient({ server: h.url, token: (await h.client.request<{ secret: string }>('POST', '/v1/tokens', { name: `${tenant}-op`, role: 'operator', tenant })).secret });
      const alice = await mk('alice');
      const bob = await mk('bob');
      const a = await alice.request<{ id: number }>('POST', '/v1/jobs', { command: ['true'], network: 'user' });
      const aNone = await alice.request<{ id: number }>('POST', '/v1/jobs', { command: ['true'] });
      const b = await bob.request<{ id: number }>('POST', '/v1/jobs', { command: ['true'], network: 'user' });
      // A GitHub runner VM of acme/app (as the provisioner submits it).
      const [gh] = await insertJobs(h.store.db, [
        { tenant: 'github', requirements: DEFAULT_REQUIREMENTS, labels: [], image: 'minimal', command: ['true'], env: {}, timeoutMs: 60_000, network: 'user', priority: 0, egressRepo: 'acme/app' },
      ]);
      h.server.scheduler.kick();
      for (const id of [a.id, aNone.id, b.id, gh!.id]) await jobReaches(h, id, ['succeeded']);
      const allow = (id: number) => seen.get(`job-${id}-1`)?.egress?.allow;
      assert.deepEqual(allow(a.id), ['198.51.100.0/24', 'pkg.example.com']);
      assert.equal(allow(aNone.id), undefined, 'no network: nothing to open');
      assert.equal(allow(b.id), undefined, "bob's jobs get none of alice's list");
      assert.deepEqual(allow(gh!.id), ['10.1.2.3/32', '10.9.0.0/16']);
    });
  });
}
