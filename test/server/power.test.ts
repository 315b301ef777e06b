// Host power with real agent processes (memory VM driver) on both stores: hosts sleep when idle and are
// woken for queued work, once per need; an unanswered wake is retried, then another host is woken; the
// warm buffer and schedules hold; a server restart mid-wake neither loses nor repeats the wake; a failing
// sleep command is reported with its output; Wake-on-LAN reaches a UDP socket on loopback.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { createSocket } from 'node:dgram';
import { once } from 'node:events';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { storeKinds, makeTestStore, makeTestDatabase } from '../store/test-stores.ts';
import { killAll, freePort, runKilnCommand, spawnBuiltKiln, type KilnProcess } from '../agent/processes.ts';
import { makeServer, type KilnServer } from '../../src/server/server.ts';
import { createToken, makeSecret } from '../../src/store/tokens.ts';
import { connectHost } from '../../src/store/hosts.ts';
import { makeApiClient, type ApiClient } from '../support/test-client.ts';
import { DEFAULT_POWER_POLICY, parseClock, parseDays, type PowerPolicy, type PowerPool } from '../../src/core/power.ts';
import type { PowerOptions } from '../../src/server/power/manager.ts';
import type { Store } from '../../src/store/store.ts';
import type { Host } from '../../src/core/host.ts';
import type { Job } from '../../src/core/job.ts';
import { quietLogger } from './harness.ts';
import type { ServerEventBus, ServerEvents } from '../../src/server/events.ts';
import { makePowerWorld, type PowerWorld } from './power-support.ts';

after(killAll);

const pool = (o: Partial<PowerPool> = {}): PowerPool => ({ name: 'all', match: {}, idleAfterMs: 300, minAwake: 0, schedules: [], ...o });
const policy = (o: Partial<PowerPolicy> = {}, p: Partial<PowerPool> = {}): PowerPolicy => ({ ...DEFAULT_POWER_POLICY, wakeTimeoutMs: 10_000, backoffMs: 100, pools: [pool(p)], ...o });

interface World {
  store: Store;
  server: KilnServer;
  url: string;
  port: number;
  admin: string;
  agentToken: string;
  client: ApiClient;
  w: PowerWorld;
  power: PowerOptions;
  /** Stops the server and starts a new one on the same store and port (a restart). */
  restart(): Promise<void>;
  close(): Promise<void>;
}

async function start(kind: 'pglite' | 'postgres', power: (w: PowerWorld) => PowerOptions): Promise<World> {
  const store = await makeTestStore(kind);
  const w = makePowerWorld();
  const admin = makeSecret('admin');
  const port = await freePort();
  const opts = power(w);
  const make = async () => {
    const s = await makeServer({ store, logger: quietLogger(), adminToken: admin, options: { pollMs: 100, heartbeatMs: 1000 }, leaderIntervalMs: 100, power: { tickMs: 100, ...opts } });
    await s.listen({ host: '127.0.0.1', port });
    return s;
  };
  const server = await make();
  const { secret: agentToken } = await createToken(store.db, { name: 'agents', role: 'agent' });
  const url = `http://127.0.0.1:${port}`;
  const world: World = {
    store,
    server,
    url,
    port,
    admin,
    agentToken,
    client: makeApiClient({ server: url, token: admin }),
    w,
    power: opts,
    async restart() {
      await world.server.close();
      world.server = await make();
      // fetch's pool may still hold a keep-alive socket to the old server: the first request on it fails and
      // drops it, so one that fails here is expected.
      for (let i = 0; i < 3; i++) if (await fetch(`${url}/healthz`).then((r) => r.ok, () => false)) break;
    },
    async close() {
      await w.cleanup();
      await world.server.close();
      await store.close();
    },
  };
  return world;
}

/** Resolves after `n` events `name` matching `pred` (subscribe before causing them). */
function collect<K extends keyof ServerEvents>(bus: ServerEventBus, name: K, n: number, pred: (p: ServerEvents[K]) => boolean = () => true, timeoutMs = 180_000): Promise<ServerEvents[K][]> {
  type T = ServerEvents[K];
  const p = new Promise<T[]>((resolve, reject) => {
    const got: T[] = [];
    const t = setTimeout(() => {
      off();
      reject(new Error(`timed out after ${timeoutMs} ms with ${got.length} of ${n} events`));
    }, timeoutMs);
    const off = bus.on(name, (p: T) => {
      if (!pred(p)) return;
      got.push(p);
      if (got.length === n) {
        clearTimeout(t);
        off();
        resolve(got);
      }
    });
  });
  p.catch(() => undefined); // awaited later; not an unhandled rejection meanwhile
  return p;
}

const hosts = async (c: ApiClient) => (await c.request<{ hosts: Host[] }>('GET', '/v1/hosts')).hosts;
const byName = async (c: ApiClient, name: string) => (await hosts(c)).find((h) => h.name === name)!;

/** Every job of `ids` succeeded (awaiting events, after checking the store first). */
async function allSucceed(wd: World, ids: number[], timeoutMs = 60_000): Promise<Job[]> {
  const left = new Set(ids);
  const done = new Promise<void>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`jobs still not done: ${[...left].slice(0, 5).join(', ')} (${left.size})`)), timeoutMs);
    const off = wd.server.events.on('job.state', (e) => {
      if (e.to === 'succeeded') left.delete(e.job.id);
      if (left.size === 0) {
        clearTimeout(t);
        off();
        resolve();
      }
    });
    void (async () => {
      for (const id of ids) {
        if (left.size === 0) return;
        const j = await wd.client.request<Job>('GET', `/v1/jobs/${id}`);
        if (j.state === 'succeeded') left.delete(id);
      }
      if (left.size === 0) {
        clearTimeout(t);
        off();
        resolve();
      }
    })().catch(() => undefined); // the events above decide; this only catches jobs that finished before we listened
  });
  await done;
  return Promise.all(ids.map((id) => wd.client.request<Job>('GET', `/v1/jobs/${id}`)));
}

async function submit(c: ApiClient, n: number, cpus = 1): Promise<number[]> {
  const jobs = Array.from({ length: n }, () => ({ command: ['sleep', '0.3'], cpus, memory: '512M' }));
  return (await c.request<{ ids: number[] }>('POST', '/v1/jobs/batch', { jobs })).ids;
}

// Process spawns dominate these tests' cost, so each scenario runs on one store and the durability one on
// both; the two-replica burst below is the PostgreSQL variant of the burst.
for (const { kind, skip } of storeKinds()) {
  if (['pglite'].includes(kind))
    void test(`idle hosts sleep (asleep, not lost); a burst wakes one host per need, jobs wait and run (${kind})`, { skip, timeout: 300_000 }, async () => {
    const wd = await start(kind, (w) => ({ policy: policy(), wakeCommand: w.wakeCommand() }));
    try {
      const asleep = collect(wd.server.events, 'power.asleep', 3);
      await Promise.all([0, 1, 2].map((i) => wd.w.spawnAgent(`h${i}`, [wd.url], wd.agentToken, { cpus: 16 })));
      await asleep.catch(async (e: unknown) => {
        console.error(JSON.stringify((await hosts(wd.client)).map((h) => [h.name, h.state, h.power])), JSON.stringify(await wd.client.request('GET', '/v1/power')));
        for (const [n, a] of wd.w.agents) console.error(n, a.output().slice(-2000));
        throw e;
      });
      // Asleep is expected to be gone: the leader's lost-host sweep leaves it alone.
      await wd.server.leader.sweep();
      const before = await hosts(wd.client);
      assert.deepEqual(before.map((h) => h.state), ['asleep', 'asleep', 'asleep']);
      assert.ok(before.every((h) => h.power?.driver === 'command' && h.stateSince));
      const metrics = await (await fetch(`${wd.url}/metrics`)).text();
      assert.match(metrics, /kiln_hosts\{state="asleep"\} 3/);

      // 30 one-CPU jobs on 16-CPU hosts: 2 hosts are needed, 2 are woken, the third sleeps on.
      const ids = await submit(wd.client, 30);
      const jobs = await allSucceed(wd, ids);
      assert.equal(wd.w.wakes().length, 2, `wakes sent: ${wd.w.wakes().join(' ')}`);
      assert.equal(new Set(wd.w.wakes()).size, 2);
      assert.ok(jobs.every((j) => j.attempt === 1 && j.state === 'succeeded'));
      const reqs = (await wd.client.request<{ requests: { kind: string; state: string; attempts: number }[] }>('GET', '/v1/power')).requests.filter((r) => r.kind === 'wake');
      assert.equal(reqs.length, 2);
      assert.ok(reqs.every((r) => r.state === 'done' && r.attempts === 1));
      const m = await (await fetch(`${wd.url}/metrics`)).text();
      assert.match(m, /kiln_power_wakes_total\{result="done"\} 2/);
      assert.match(m, /kiln_jobs_waited_for_wake_total 30/);
      assert.match(m, /kiln_power_wake_latency_seconds_count 2/);
      assert.match(m, /kiln_host_state_seconds_total\{state="asleep"\} [1-9]/);
    } finally {
      await wd.close();
    }
  });

  if (['postgres'].includes(kind))
    void test(`a wake that never completes is retried with backoff, then the host is marked and another woken (${kind})`, { skip, timeout: 300_000 }, async () => {
    const wd = await start(kind, (w) => ({ policy: policy({ wakeTimeoutMs: 1500, wakeAttempts: 2 }), wakeCommand: w.wakeCommand() }));
    try {
      const asleep = collect(wd.server.events, 'power.asleep', 2);
      // The stuck host is the better fit (smaller), so it is tried first.
      await Promise.all([wd.w.spawnAgent('stuck-a', [wd.url], wd.agentToken, { cpus: 4 }), wd.w.spawnAgent('ok-b', [wd.url], wd.agentToken, { cpus: 8 })]);
      await asleep;
      const failed = collect(wd.server.events, 'power.wake_failed', 1);
      const [id] = await submit(wd.client, 1);
      const [job] = await allSucceed(wd, [id!]);
      assert.equal(job!.attempt, 1);
      assert.equal((await failed)[0]!.name, 'stuck-a');
      assert.deepEqual(wd.w.wakes(), ['stuck-a', 'stuck-a', 'ok-b']);
      const stuck = await byName(wd.client, 'stuck-a');
      assert.equal(stuck.state, 'asleep', 'a host that did not wake is asleep, not offline or lost');
      assert.equal(stuck.wakeFailures, 1);
      assert.ok(stuck.wakeMarkedUntil && Date.parse(stuck.wakeMarkedUntil) > Date.now());
      assert.match(stuck.power?.lastError?.message ?? '', /did not connect within 2 s of wake attempt 2 of 2/);
      // The CLI shows it.
      const ls = await runKilnCommand(['hosts', 'ls'], { KILN_SERVER: wd.url, KILN_TOKEN: wd.admin });
      assert.match(ls.stdout, /stuck-a\s+asleep,wake-failed \d+s/);
      assert.match(ls.stdout, /stuck-a.*command \(error\)/);
    } finally {
      await wd.close();
    }
  });

  if (['pglite'].includes(kind))
    void test(`the minimum awake hosts hold; a schedule keeps hosts awake in its window (injected clock) (${kind})`, { skip, timeout: 300_000 }, async () => {
    let clock = Date.parse('2026-12-07T06:00:00Z'); // a Monday, before the window
    const schedules = [{ days: parseDays('mon-fri'), fromMin: parseClock('08:00'), toMin: parseClock('19:00'), timeZone: 'UTC', minAwake: Infinity }];
    const wd = await start(kind, (w) => ({ policy: policy({}, { idleAfterMs: 5 * 60_000, minAwake: 1, schedules }), wakeCommand: w.wakeCommand(0.1), now: () => clock }));
    try {
      await Promise.all(['m0', 'm1', 'm2'].map((n) => wd.w.spawnAgent(n, [wd.url], wd.agentToken, { cpus: 4 })));
      await wd.server.power.tick();
      const asleep = collect(wd.server.events, 'power.asleep', 2);
      clock += 10 * 60_000; // idle for 10 minutes: two sleep, one stays (the warm buffer)
      await asleep;
      for (let i = 0; i < 5; i++) await wd.server.power.tick();
      clock += 60 * 60_000;
      for (let i = 0; i < 5; i++) await wd.server.power.tick();
      assert.deepEqual((await hosts(wd.client)).map((h) => h.state).sort(), ['asleep', 'asleep', 'online']);
      assert.equal(wd.w.wakes().length, 0);

      // 09:00: the window opens and every host is woken.
      const online = collect(wd.server.events, 'host.connected', 2);
      clock = Date.parse('2026-12-07T09:00:00Z');
      await online;
      assert.equal(wd.w.wakes().length, 2);
      clock += 3 * 3600_000; // idle for hours, inside the window: nobody sleeps
      for (let i = 0; i < 5; i++) await wd.server.power.tick();
      assert.deepEqual((await hosts(wd.client)).map((h) => h.state), ['online', 'online', 'online']);

      // 20:00: the window closed; idle hosts sleep down to the minimum.
      const again = collect(wd.server.events, 'power.asleep', 2);
      clock = Date.parse('2026-12-07T20:00:00Z');
      await wd.server.power.tick();
      clock += 10 * 60_000;
      await again;
      assert.deepEqual((await hosts(wd.client)).map((h) => h.state).sort(), ['asleep', 'asleep', 'online']);
    } finally {
      await wd.close();
    }
  });

  if (['pglite', 'postgres'].includes(kind))
    void test(`a server restart mid-wake neither loses the wake nor sends a second (${kind})`, { skip, timeout: 300_000 }, async () => {
    const wd = await start(kind, (w) => ({ policy: policy({ wakeTimeoutMs: 20_000 }), wakeCommand: w.wakeCommand(2) }));
    try {
      const asleep = collect(wd.server.events, 'power.asleep', 1);
      await wd.w.spawnAgent('r0', [wd.url], wd.agentToken, { cpus: 4 });
      await asleep;
      const sent = collect(wd.server.events, 'power.wake_sent', 1);
      const [id] = await submit(wd.client, 1);
      await sent;
      // The wake command continues the agent 2 s from now; the server restarts meanwhile.
      await wd.restart();
      const [job] = await allSucceed(wd, [id!]);
      assert.equal(job!.state, 'succeeded');
      assert.deepEqual(wd.w.wakes(), ['r0']);
      const reqs = (await wd.client.request<{ requests: { kind: string; state: string; attempts: number }[] }>('GET', '/v1/power')).requests.filter((r) => r.kind === 'wake');
      assert.deepEqual(reqs.map((r) => [r.state, r.attempts]), [['done', 1]]);
    } finally {
      await wd.close();
    }
  });

  if (['postgres'].includes(kind))
    void test(`a failing sleep command is reported with its output and the host takes jobs again (${kind})`, { skip, timeout: 300_000 }, async () => {
    const wd = await start(kind, () => ({ policy: policy({}, { idleAfterMs: undefined }) }));
    try {
      await wd.w.spawnAgent('bad', [wd.url], wd.agentToken, { cpus: 4, sleepCommand: 'echo "suspend: operation not permitted" >&2; exit 3' });
      const err = collect(wd.server.events, 'power.error', 1);
      const r = await runKilnCommand(['hosts', 'sleep', 'bad'], { KILN_SERVER: wd.url, KILN_TOKEN: wd.admin });
      assert.equal(r.code, 0, r.stderr);
      const [e] = await err;
      assert.match(e!.message, /the sleep command exited 3; its output: suspend: operation not permitted/);
      const h = await byName(wd.client, 'bad');
      assert.equal(h.state, 'online');
      assert.match(h.power?.lastError?.message ?? '', /operation not permitted/);
      const [id] = await submit(wd.client, 1);
      await allSucceed(wd, [id!]);
      // Asking a host with no power driver, or one that is not asleep, is a clear 409.
      const wrong = await runKilnCommand(['hosts', 'wake', 'bad'], { KILN_SERVER: wd.url, KILN_TOKEN: wd.admin });
      assert.notEqual(wrong.code, 0);
      assert.match(wrong.stderr, /online, not asleep/);
    } finally {
      await wd.close();
    }
  });

  if (['pglite'].includes(kind))
    void test(`Wake-on-LAN: the magic packet for the MAC the agent reported reaches its broadcast address (${kind})`, { skip, timeout: 300_000 }, async () => {
    const udp = createSocket('udp4');
    udp.bind(0, '127.0.0.1');
    await once(udp, 'listening');
    const port = udp.address().port;
    const wd = await start(kind, () => ({ policy: policy({}, { idleAfterMs: undefined }) }));
    try {
      const agent = await wd.w.spawnAgent('wol0', [wd.url], wd.agentToken, { cpus: 4, wol: { mac: 'AA:BB:CC:00:11:22', broadcast: '127.0.0.1', port } });
      const env = { KILN_SERVER: wd.url, KILN_TOKEN: wd.admin };
      const asleep = collect(wd.server.events, 'power.asleep', 1);
      assert.equal((await runKilnCommand(['hosts', 'sleep', 'wol0'], env)).code, 0);
      await asleep;
      const h = await byName(wd.client, 'wol0');
      assert.deepEqual([h.state, h.power?.driver, h.power?.mac, h.power?.broadcast, h.power?.port], ['asleep', 'wol', 'aa:bb:cc:00:11:22', '127.0.0.1', port]);
      assert.match((await runKilnCommand(['hosts', 'ls'], env)).stdout, /wol0\s+asleep \d+s/);

      const packet = once(udp, 'message') as Promise<[Buffer]>;
      assert.equal((await runKilnCommand(['hosts', 'wake', 'wol0'], env)).code, 0);
      const [msg] = await packet;
      const mac = Buffer.from('aabbcc001122', 'hex');
      assert.equal(msg.length, 102);
      assert.ok(msg.subarray(0, 6).equals(Buffer.alloc(6, 0xff)));
      for (let i = 0; i < 16; i++) assert.ok(msg.subarray(6 + i * 6, 12 + i * 6).equals(mac));
      assert.match((await runKilnCommand(['hosts', 'ls'], env)).stdout, /wol0\s+waking \d+s/);
      // The "NIC" wakes the host.
      const up = collect(wd.server.events, 'host.connected', 1);
      process.kill(agent.proc.pid!, 'SIGCONT');
      await up;
      assert.equal((await byName(wd.client, 'wol0')).state, 'online');
    } finally {
      udp.close();
      await wd.close();
    }
  });
}

// The relay: the asleep host's Wake-on-LAN packet is sent by an awake agent that reported the same broadcast
// network (the server may not be on it). One packet arrives, from the relay (its log says so), not the server.
for (const { kind, skip } of storeKinds()) {
  if (kind === 'pglite')
    void test(`Wake-on-LAN relay: an awake agent on the same network sends the magic packet (${kind})`, { skip, timeout: 300_000 }, async () => {
      const udp = createSocket('udp4');
      udp.bind(0, '127.0.0.1');
      await once(udp, 'listening');
      const port = udp.address().port;
      const packets: Buffer[] = [];
      udp.on('message', (m) => packets.push(m));
      const wd = await start(kind, () => ({ policy: policy({}, { idleAfterMs: undefined }) }));
      try {
        const sleeper = await wd.w.spawnAgent('wol0', [wd.url], wd.agentToken, { cpus: 4, wol: { mac: 'AA:BB:CC:00:11:22', broadcast: '127.0.0.1', port } });
        const relay = await wd.w.spawnAgent('wol1', [wd.url], wd.agentToken, { cpus: 4, wol: { mac: 'AA:BB:CC:00:11:33', broadcast: '127.0.0.1', port } });
        const env = { KILN_SERVER: wd.url, KILN_TOKEN: wd.admin };
        await until('both hosts online', () => wd.client.request<{ hosts: Host[] }>('GET', '/v1/hosts'), (r) => r.hosts.filter((h) => h.state === 'online').length === 2);
        const asleep = collect(wd.server.events, 'power.asleep', 1);
        assert.equal((await runKilnCommand(['hosts', 'sleep', 'wol0'], env)).code, 0);
        await asleep;
        const sent = collect(wd.server.events, 'power.wake_sent', 1);
        const packet = once(udp, 'message') as Promise<[Buffer]>;
        assert.equal((await runKilnCommand(['hosts', 'wake', 'wol0'], env)).code, 0);
        const [e] = await sent;
        assert.equal(e!.via, 'wol1', 'the wake went through the awake host on the same network');
        const [msg] = await packet;
        const mac = Buffer.from('aabbcc001122', 'hex');
        assert.equal(msg.length, 102);
        assert.ok(msg.subarray(0, 6).equals(Buffer.alloc(6, 0xff)));
        for (let i = 0; i < 16; i++) assert.ok(msg.subarray(6 + i * 6, 12 + i * 6).equals(mac));
        await relay.waitForOutput(/sent a Wake-on-LAN packet for a host on this network/, 30_000);
        assert.doesNotMatch(sleeper.output(), /sent a Wake-on-LAN packet/);
        // The wake is answered when the "NIC" wakes the host; no second packet was sent (first attempt: the
        // relay only, not the server as well).
        const up = collect(wd.server.events, 'host.connected', 1, (c) => c.name === 'wol0');
        process.kill(sleeper.proc.pid!, 'SIGCONT');
        await up;
        assert.equal((await byName(wd.client, 'wol0')).state, 'online');
        assert.equal(packets.length, 1, `${packets.length} packets`);
      } finally {
        udp.close();
        await wd.close();
      }
    });
}

/** Polls another process's API until `pred` holds (the replicas are other processes: no events to await). */
async function until<T>(what: string, f: () => Promise<T>, pred: (v: T) => boolean, timeoutMs = 180_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await f().catch(() => undefined);
    if (v !== undefined && pred(v)) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

const pgSkip = storeKinds().find((k) => k.kind === 'postgres')?.skip ?? false;

void test('two replicas on PostgreSQL: a burst of 50 jobs for an asleep pool wakes one host per need, once', { skip: pgSkip, timeout: 400_000 }, async () => {
  const db = await makeTestDatabase();
  const w = makePowerWorld();
  const admin = makeSecret('admin');
  const servers: KilnProcess[] = [];
  try {
    const config = join(w.dir, 'server.json');
    writeFileSync(config, JSON.stringify({ power: { tick: '100ms', wakeTimeout: '60s', wakeCommand: w.wakeCommand(), pools: [{ name: 'all', sleepAfter: '300ms' }] } }));
    const ports = [await freePort(), await freePort()];
    for (const [i, port] of ports.entries()) {
      const s = spawnBuiltKiln(['server', '--listen', `127.0.0.1:${port}`, '--data-dir', join(w.dir, `s${i}`), '--config', config], { KILN_DATABASE_URL: db.url, KILN_ADMIN_TOKEN: admin });
      servers.push(s);
      await s.waitForOutput(/listening at/, 180_000);
    }
    const [urlA, urlB] = ports.map((p) => `http://127.0.0.1:${p}`) as [string, string];
    const a = makeApiClient({ server: urlA, token: admin });
    const b = makeApiClient({ server: urlB, token: admin });
    const { secret: agentToken } = await a.request<{ secret: string }>('POST', '/v1/tokens', { name: 'agents', role: 'agent' });
    // Four 20-CPU hosts, spread over both replicas.
    await Promise.all([0, 1, 2, 3].map((i) => w.spawnAgent(`p${i}`, i % 2 === 0 ? [urlA, urlB] : [urlB, urlA], agentToken, { cpus: 20 })));
    await until('every host asleep', () => hosts(a), (hs) => hs.length === 4 && hs.every((h) => h.state === 'asleep'));
    // 50 one-CPU jobs, half through each replica: 3 hosts are needed (50 / 20), 3 are woken.
    const jobs = Array.from({ length: 25 }, () => ({ command: ['sleep', '0.3'], cpus: 1, memory: '512M' }));
    const { ids: idsA } = await a.request<{ ids: number[] }>('POST', '/v1/jobs/batch', { jobs });
    const { ids: idsB } = await b.request<{ ids: number[] }>('POST', '/v1/jobs/batch', { jobs });
    const all = [...idsA, ...idsB];
    const done = await until('every job to succeed', () => Promise.all(all.map((id) => b.request<Job>('GET', `/v1/jobs/${id}`))), (js) => js.every((j) => j.state === 'succeeded'));
    assert.ok(done.every((j) => j.attempt === 1));
    assert.equal(w.wakes().length, 3, `wakes sent: ${w.wakes().join(' ')}`);
    assert.equal(new Set(w.wakes()).size, 3);
    const reqs = (await b.request<{ requests: { kind: string; state: string; attempts: number }[] }>('GET', '/v1/power')).requests.filter((r) => r.kind === 'wake');
    assert.deepEqual(reqs.map((r) => [r.state, r.attempts]), [['done', 1], ['done', 1], ['done', 1]]);
    const states = (await hosts(a)).map((h) => h.state);
    assert.ok(!states.includes('offline'), `no host is offline or lost: ${states.join(' ')}`);
  } finally {
    await w.cleanup();
    for (const s of servers) await s.kill('SIGTERM');
    await db.drop();
  }
});

// In-process, no agents: hosts registered straight in the store. With no host that has a power driver the
// leader has nothing to decide and skips the fleet read and the placement on paper (a tenth of a core on a
// 1,000-host fleet, every second), yet still counts host-seconds per state; one host reporting a driver
// brings the decisions back.
for (const { kind, skip } of storeKinds()) {
  void test(`no host with a power driver: no decision, host-seconds still counted; a host with one brings decisions back (${kind})`, { skip, timeout: 60_000 }, async () => {
    const store = await makeTestStore(kind);
    const server = await makeServer({
      store,
      logger: quietLogger(),
      adminToken: makeSecret('admin'),
      options: { pollMs: 100, heartbeatMs: 1000 },
      leaderIntervalMs: 100,
      // ticks are run by the test (one a minute otherwise)
      power: { tickMs: 60_000, policy: policy() },
    });
    try {
      await server.listen({ host: '127.0.0.1', port: 0 });
      const cap = (name: string) => ({ name, arch: 'amd64' as const, cpus: 8, memoryBytes: 8 * 1024 ** 3, diskBytes: 100 * 1024 ** 3, accel: 'tcg' as const, labels: [], driver: 'memory', agentVersion: '0.1.0' });
      await connectHost(store.db, cap('plain-1'), 'elsewhere');
      await connectHost(store.db, cap('plain-2'), 'elsewhere', undefined, { driver: 'none' });
      const onlineSeconds = async () => Number(/kiln_host_state_seconds_total\{state="online"\} ([0-9.e+-]+)/.exec(await server.ctx.metrics.registry.metrics())?.[1] ?? 0);
      const deadline = Date.now() + 30_000;
      while (!server.leader.isLeader() || (await onlineSeconds()) === 0) {
        assert.ok(Date.now() < deadline, 'the server became leader and counted host-seconds');
        await server.power.tick();
        await new Promise((r) => setTimeout(r, 50));
      }
      assert.equal(server.power.lastDecision(), undefined, 'nothing to decide');
      const before = await onlineSeconds();
      await new Promise((r) => setTimeout(r, 100));
      await server.power.tick();
      assert.ok((await onlineSeconds()) > before, 'host-seconds keep being counted');
      assert.equal(server.power.lastDecision(), undefined);

      await connectHost(store.db, cap('managed'), 'elsewhere', undefined, { driver: 'command' });
      await server.power.tick();
      assert.deepEqual(server.power.lastDecision(), { sleep: [], wake: [], unplaceable: 0 }, 'a decision is made again');
    } finally {
      await server.close();
      await store.close();
    }
  });
}
