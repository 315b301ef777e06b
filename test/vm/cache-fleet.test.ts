/**
 * Warm caches through the control plane: `kiln up` (server + agent, real QEMU under TCG, the minimal image),
 * jobs submitted through the API with `cache: {key, write}`. The agent leases, commits and reports its caches;
 * /metrics counts hits, misses and commits; SIGKILL of `kiln up` (the agent) mid-commit leaves the previous
 * version usable (KILN_TEST_HOLD_CACHE_COMMIT holds the commit before its pointer's rename).
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { makeApiClient } from '../../src/cli/api-client.ts';
import { API } from '../../src/core/http-contract.ts';
import { makeSecret } from '../../src/store/tokens.ts';
import { makeCacheStore } from '../../src/vm/cache-store.ts';
import { makeSnapshotStore } from '../../src/vm/snapshot-store.ts';
import { freePort, killAll, runKilnCommand, spawnBuiltKiln } from '../agent/processes.ts';
import { assertNoLeaks, ensureImage, makeTestDataDir } from '../support/kiln.ts';

const data = makeTestDataDir();
before(() => {
  ensureImage('amd64');
});
after(async () => {
  await killAll();
  assertNoLeaks(data.dir);
  data.cleanup();
});

async function until<T>(what: string, f: () => Promise<T>, pred: (v: T) => boolean, timeoutMs = 240_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await f().catch(() => undefined);
    if (v !== undefined && pred(v)) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

const FINAL = ['succeeded', 'failed', 'lost', 'cancelled', 'timed_out'];

test('API jobs: a writing job\'s cache is read by the next job on the host; metrics count it; SIGKILL mid-commit keeps the old version', { timeout: 600_000 }, async () => {
  const admin = makeSecret('admin');
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const args = ['up', '--listen', `127.0.0.1:${port}`, '--data-dir', data.dir];
  const env = { KILN_ADMIN_TOKEN: admin, KILN_ACCEL: 'tcg' };
  const client = makeApiClient({ server: url, token: admin });
  const run = async (command: string, cache: { key: string; write?: boolean; size?: string }) => {
    const j = await client.call(API.submitJob, { body: { command: ['sh', '-c', command], memory: '256M', disk: '256M', cache } });
    return j.id;
  };
  const end = (id: number) => until(`job ${id} to end`, () => client.call(API.getJob, { params: { id } }), (j) => FINAL.includes(j.state));
  const logs = async (id: number) => {
    let text = '';
    await client.logs(id, { follow: false, onChunk: (_s, data) => void (text += data.toString()) });
    return text;
  };

  let up = spawnBuiltKiln(args, env);
  await up.waitForOutput(/kiln is up at/, 120_000);
  const w = await run('echo from-api > /cache/f', { key: 'fleet', write: true, size: '64M' });
  assert.equal((await end(w)).state, 'succeeded');
  const info = makeCacheStore(data.dir).inspect('default/fleet');
  assert.ok(info?.current, 'the agent committed the cache under the tenant\'s key');
  assert.equal(info.current.jobId, String(w));
  assert.match(info.current.by ?? '', /^api token \d+$/);

  const r = await run('cat /cache/f; echo changed > /cache/f', { key: 'fleet' });
  assert.equal((await end(r)).state, 'succeeded');
  assert.match(await logs(r), /from-api/);
  assert.equal(makeCacheStore(data.dir).inspect('default/fleet')!.current!.id, info.current.id, 'a job without write leaves the version');

  const metrics = await (await fetch(`${url}/metrics`, { headers: { authorization: `Bearer ${admin}` } })).text();
  assert.match(metrics, /^kiln_cache_hits_total 1$/m);
  assert.match(metrics, /^kiln_cache_misses_total 1$/m);
  assert.match(metrics, /^kiln_cache_commits_total 1$/m);
  assert.match(metrics, /^kiln_cache_commit_seconds_count 1$/m);
  // The agent reported its caches: `kiln caches ls --fleet` lists them by key with the hosts holding them.
  const ls = await until('the host to report its cache', () => runKilnCommand(['caches', 'ls', '--fleet', '--json'], { KILN_SERVER: url, KILN_TOKEN: admin }), (x) => x.stdout.includes('default/fleet'), 30_000);
  const listed = JSON.parse(ls.stdout) as { key: string; hosts: string[]; version?: string }[];
  assert.equal(listed.find((c) => c.key === 'default/fleet')?.version, info.current.id);
  assert.equal(listed.find((c) => c.key === 'default/fleet')?.hosts.length, 1);
  await up.kill('SIGTERM');

  // The agent (kiln up) killed between the new version on disk and the pointer's rename. Each restart gets a
  // fresh control-plane store: the host's free disk (its capacity claim) moves with other work on this
  // machine, and a claim above the registered one is refused (security); the caches are the agent's, kept.
  rmSync(join(data.dir, 'db'), { recursive: true, force: true });
  up = spawnBuiltKiln(args, { ...env, KILN_TEST_HOLD_CACHE_COMMIT: '1' });
  await up.waitForOutput(/kiln is up at/, 120_000);
  const k = await run('echo new > /cache/f', { key: 'fleet', write: true });
  await up.waitForOutput(/holding the commit of cache default\/fleet/, 240_000);
  await up.kill('SIGKILL');
  rmSync(join(data.dir, 'db'), { recursive: true, force: true });
  up = spawnBuiltKiln(args, env);
  await up.waitForOutput(/kiln is up at/, 120_000);
  assert.equal(makeCacheStore(data.dir).inspect('default/fleet')!.current!.id, info.current.id, 'the previous version is still current');
  assert.ok(k > 0);
  const after = await run('cat /cache/f', { key: 'fleet' });
  assert.equal((await end(after)).state, 'succeeded');
  assert.match(await logs(after), /from-api/);
  await up.kill('SIGTERM');
});

test('API jobs with a cache restore warm once the agent has built the snapshot with their cache slot; each cache sees its own', { timeout: 600_000 }, async () => {
  // By digest: `default` is the newest minimal image in the shared store, which may be another checkout's.
  const image = ensureImage('amd64');
  const own = makeTestDataDir();
  const admin = makeSecret('admin');
  const port = await freePort();
  const client = makeApiClient({ server: `http://127.0.0.1:${port}`, token: admin });
  const run = async (command: string, cache: { key: string; write?: boolean; size?: string }) => {
    const j = await client.call(API.submitJob, { body: { image: image.digest, command: ['sh', '-c', command], memory: '256M', disk: '256M', cache } });
    const done = await until(`job ${j.id} to end`, () => client.call(API.getJob, { params: { id: j.id } }), (x) => FINAL.includes(x.state));
    let text = '';
    await client.logs(j.id, { follow: false, onChunk: (_s, d) => void (text += d.toString()) });
    return { state: done.state, vmStart: done.vmStart, text };
  };
  const up = spawnBuiltKiln(['up', '--listen', `127.0.0.1:${port}`, '--data-dir', own.dir], { KILN_ADMIN_TOKEN: admin, KILN_ACCEL: 'tcg' });
  try {
    await up.waitForOutput(/kiln is up at/, 120_000);
    const first = await run('echo one > /cache/marker', { key: 'warm-a', write: true, size: '64M' });
    assert.equal(first.state, 'succeeded', first.text);
    assert.equal(first.vmStart, 'cold', 'no snapshot with a 64M cache slot yet: the job boots cold and does not wait for a build');
    // The planner counted the launch as a use of the shape with a 64M cache and builds that snapshot.
    await until(
      'the agent to build the snapshot with a 64M cache slot',
      async () => makeSnapshotStore(own.dir).list(),
      (l) => l.some((s) => s.key.cacheBytes === 64 * 2 ** 20),
      300_000,
    );
    const second = await run('cat /cache/marker; echo two > /cache/marker', { key: 'warm-a', write: true });
    assert.equal(second.state, 'succeeded', second.text);
    assert.equal(second.vmStart, 'warm');
    assert.equal(second.text, 'one\n');
    const other = await run('ls /cache', { key: 'warm-b', write: true, size: '64M' });
    assert.equal(other.vmStart, 'warm');
    assert.equal(other.text, 'lost+found\n', 'another cache from the same snapshot sees its own (empty) file system');
    const third = await run('cat /cache/marker', { key: 'warm-a' });
    assert.equal(third.vmStart, 'warm');
    assert.equal(third.text, 'two\n', 'the warm job\'s write-back was committed');
    await up.kill('SIGTERM');
    assertNoLeaks(own.dir);
  } finally {
    await up.kill('SIGKILL').catch(() => undefined);
    own.cleanup();
  }
});
