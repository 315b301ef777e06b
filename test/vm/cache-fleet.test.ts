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
