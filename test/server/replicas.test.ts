// Two `kiln server` processes on one PostgreSQL; agents spread over both; one replica is SIGKILLed under
// load. Every job must run exactly once and succeed, the agents must move to the surviving replica, and it
// must take over leadership.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { storeKinds, makeTestDatabase } from '../store/test-stores.ts';
import { spawnKiln, killAll, freePort, type KilnProcess } from '../agent/processes.ts';
import { makeApiClient, type ApiClient } from '../support/test-client.ts';
import { makeAgent, type Agent } from '../../src/agent/agent.ts';
import { memoryImageResolver } from '../../src/agent/images.ts';
import { makeMemoryDriver } from '../../src/vm/memory-driver.ts';
import { makeSecret } from '../../src/store/tokens.ts';
import type { Job } from '../../src/core/job.ts';
import { quietLogger } from './harness.ts';

after(killAll);

const pgSkip = storeKinds().find((k) => k.kind === 'postgres')?.skip ?? false;

/** Polls an external process's API until `pred` holds (the replicas are other processes: no events to await). */
async function until<T>(what: string, f: () => Promise<T>, pred: (v: T) => boolean, timeoutMs = 60_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await f().catch(() => undefined);
    if (v !== undefined && pred(v)) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

void test('two replicas, one SIGKILLed under load: each job placed and run exactly once', { skip: pgSkip, timeout: 180_000 }, async () => {
  const db = await makeTestDatabase();
  const dir = mkdtempSync(join(tmpdir(), 'kiln-replicas-'));
  const journal = join(dir, 'journal');
  const admin = makeSecret('admin');
  const agents: Agent[] = [];
  const servers: KilnProcess[] = [];
  try {
    const ports = [await freePort(), await freePort()];
    for (const [i, port] of ports.entries()) {
      const s = spawnKiln(['server', '--listen', `127.0.0.1:${port}`, '--data-dir', join(dir, `s${i}`)], {
        KILN_DATABASE_URL: db.url,
        KILN_ADMIN_TOKEN: admin,
      });
      servers.push(s);
      // Start one at a time: the first runs the migrations, the second finds them done.
      await s.waitForOutput(/listening at/);
    }
    const [urlA, urlB] = ports.map((p) => `http://127.0.0.1:${p}`) as [string, string];
    const a: ApiClient = makeApiClient({ server: urlA, token: admin });
    const b: ApiClient = makeApiClient({ server: urlB, token: admin });
    const { secret: agentToken } = await a.request<{ secret: string }>('POST', '/v1/tokens', { name: 'agents', role: 'agent' });
    for (let i = 0; i < 4; i++) {
      const agent = makeAgent({
        servers: i % 2 === 0 ? [urlA, urlB] : [urlB, urlA],
        token: agentToken,
        name: `host-${i}`,
        driver: makeMemoryDriver({ cpus: 4, appendDir: dirname(journal) }),
        images: memoryImageResolver,
        logger: quietLogger(),
        minBackoffMs: 100,
        maxBackoffMs: 1000,
      });
      agents.push(agent);
      const c = agent.connected();
      await agent.start();
      await c;
    }
    const N = 400;
    const jobs = Array.from({ length: N }, (_, i) => ({ command: ['sh', '-c', `sleep 0.15; append ${journal} tag-${i}`], cpus: 1, memory: '1G' }));
    // Half submitted through each replica.
    const { ids: idsA } = await a.request<{ ids: number[] }>('POST', '/v1/jobs/batch', { jobs: jobs.slice(0, N / 2) });
    const { ids: idsB } = await b.request<{ ids: number[] }>('POST', '/v1/jobs/batch', { jobs: jobs.slice(N / 2) });
    assert.equal(idsA.length + idsB.length, N);

    const count = async (c: ApiClient, state: string) => (await c.request<{ jobs: Job[] }>('GET', `/v1/jobs?state=${state}&limit=1000`)).jobs.length;
    await until('a quarter of the jobs to finish', () => count(b, 'succeeded'), (n) => n >= N / 4);
    const killedAt = Date.now();
    await servers[0]!.kill('SIGKILL');

    const { serverId: idB } = (await (await fetch(`${urlB}/healthz`)).json()) as { serverId: string };
    await until('every agent on the surviving replica', () => b.request<{ hosts: { state: string; serverId: string | null }[] }>('GET', '/v1/hosts'), (r) => r.hosts.filter((h) => h.state === 'online' && h.serverId === idB).length === 4);
    const movedMs = Date.now() - killedAt;
    await until('the surviving replica to lead', async () => (await (await fetch(`${urlB}/healthz`)).json()) as { leader: boolean }, (r) => r.leader);
    await until('all jobs to finish', () => count(b, 'succeeded'), (n) => n === N, 60_000).catch(async (e: unknown) => {
      const left = (await b.request<{ jobs: Job[] }>('GET', '/v1/jobs?limit=1000')).jobs.filter((j) => j.state !== 'succeeded');
      console.error(JSON.stringify(left.slice(0, 5).map((j) => ({ id: j.id, state: j.state, attempt: j.attempt, host: j.hostId, error: j.error }))), left.length);
      console.error(servers[1]!.output().slice(-3000));
      throw e;
    });

    const all = (await b.request<{ jobs: Job[] }>('GET', '/v1/jobs?limit=1000')).jobs;
    assert.equal(all.length, N);
    assert.deepEqual([...new Set(all.map((j) => j.state))], ['succeeded']);
    const lines = readFileSync(journal, 'utf8').trim().split('\n');
    const seen = new Map<string, number>();
    for (const l of lines) seen.set(l, (seen.get(l) ?? 0) + 1);
    const twice = [...seen].filter(([, n]) => n > 1).map(([t]) => t);
    assert.deepEqual(twice, [], 'no job ran twice');
    assert.equal(seen.size, N, 'every job ran');
    console.error(`replicas: ${N} jobs, replica killed after ${N / 4}+ finished; agents moved in ${movedMs} ms; ${all.filter((j) => j.attempt > 1).length} requeued`);
  } finally {
    for (const ag of agents) await ag.stop();
    for (const s of servers) await s.kill('SIGTERM');
    await db.drop();
    if (existsSync(dir)) rmSync(dir, { recursive: true, force: true });
  }
});

function deferred(): { promise: Promise<void>; resolve(): void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

void test('a replica SIGKILLed while an agent streams numbered lines: every line is stored, in order, once', { skip: pgSkip, timeout: 120_000 }, async () => {
  const db = await makeTestDatabase();
  const dir = mkdtempSync(join(tmpdir(), 'kiln-replica-output-'));
  const admin = makeSecret('admin');
  const servers: KilnProcess[] = [];
  let agent: Agent | undefined;
  // The guest program prints lines 1-40, 41-60 and 61-80, each group when the test lets it.
  const gates = [deferred(), deferred()];
  const printed = [deferred(), deferred()];
  const lines = async (p: { stdout(s: string): void }) => {
    for (let i = 1; i <= 80; i++) {
      p.stdout(`line ${i}\n`);
      if (i === 40 || i === 60) {
        const g = i === 40 ? 0 : 1;
        printed[g]!.resolve();
        await gates[g]!.promise;
      }
    }
    return 0;
  };
  try {
    const ports = [await freePort(), await freePort()];
    for (const [i, port] of ports.entries()) {
      const s = spawnKiln(['server', '--listen', `127.0.0.1:${port}`, '--data-dir', join(dir, `s${i}`)], { KILN_DATABASE_URL: db.url, KILN_ADMIN_TOKEN: admin });
      servers.push(s);
      await s.waitForOutput(/listening at/, 90_000);
    }
    const [urlA, urlB] = ports.map((p) => `http://127.0.0.1:${p}`) as [string, string];
    const a = makeApiClient({ server: urlA, token: admin });
    const b = makeApiClient({ server: urlB, token: admin });
    const { secret } = await a.request<{ secret: string }>('POST', '/v1/tokens', { name: 'agents', role: 'agent' });
    agent = makeAgent({
      servers: [urlA, urlB],
      token: secret,
      name: 'streamer',
      driver: makeMemoryDriver({ cpus: 2, programs: { lines } }),
      images: memoryImageResolver,
      logger: quietLogger(),
      minBackoffMs: 100,
      maxBackoffMs: 500,
      outputSpillDir: join(dir, 'agent-output'),
    });
    const c = agent.connected();
    await agent.start();
    assert.equal((await c).serverId, ((await (await fetch(`${urlA}/healthz`)).json()) as { serverId: string }).serverId);
    const job = await a.request<Job>('POST', '/v1/jobs', { command: ['lines'], cpus: 1 });
    const stored = async () => {
      let text = '';
      await b.logs(job.id, { follow: false, onChunk: (_s, d) => void (text += d.toString()) });
      return text;
    };
    await printed[0]!.promise;
    await until('lines 1-40 to be stored', stored, (t) => t.includes('line 40\n'));
    // Replica A stops reading: what the agent sends next sits unread in A's socket, then A dies with it.
    servers[0]!.proc.kill('SIGSTOP');
    gates[0]!.resolve();
    await printed[1]!.promise;
    // The agent sends output at most 10 ms after the guest prints it; give it time to leave for A.
    await new Promise((r) => setTimeout(r, 300));
    const moved = once(agent.events, 'connected');
    await servers[0]!.kill('SIGKILL');
    // Lines 61-80 are printed while the agent is away or reconnecting.
    gates[1]!.resolve();
    await moved;
    const done = await until('the job to finish', () => b.request<Job>('GET', `/v1/jobs/${job.id}`), (j) => j.state === 'succeeded' || j.state === 'failed' || j.state === 'lost');
    assert.equal(done.state, 'succeeded');
    const want = Array.from({ length: 80 }, (_, i) => `line ${i + 1}`);
    const got = (await stored()).trimEnd().split('\n');
    const missing = want.filter((l) => !got.includes(l));
    assert.deepEqual(missing, [], 'no line is missing');
    assert.deepEqual(got, want, 'every line once, in order');
  } finally {
    for (const g of gates) g.resolve();
    await agent?.stop();
    for (const s of servers) await s.kill('SIGKILL');
    await db.drop();
    rmSync(dir, { recursive: true, force: true });
  }
});
