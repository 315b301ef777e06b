// The storage suite: the same tests against PGlite and a real PostgreSQL server.
import { sql } from 'kysely';
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { storeKinds, makeTestStore } from './test-stores.ts';
import type { Store } from '../../src/store/store.ts';
import { migrate } from '../../src/store/store.ts';
import { committedCacheVersion, setCacheAnswer, setCacheOutcome, insertJobs, getJob, listJobs, claimQueuedJobs, markPlaced, recordExits, transitionJob, jobTransitions, loseJob, requestCancel, applyPhases, transitionJobs, activeJobsOnHosts, countJobsByState } from '../../src/store/jobs.ts';
import { setTenantLimit, tenantUsage } from '../../src/store/tenants.ts';
import { appendLogs, readLogs, storedLogSeq } from '../../src/store/logs.ts';
import { connectHost, disconnectHost, lockSchedulableHosts, listHosts, updateHostFlags, findHost, setHostCaches } from '../../src/store/hosts.ts';
import { createToken, findTokenBySecret, revokeToken } from '../../src/store/tokens.ts';
import { DEFAULT_REQUIREMENTS } from '../../src/core/requirements.ts';
import { launchSpecOf, type Job, type JobSpec } from '../../src/core/job.ts';
import type { CacheOutcomeMsg, HostCapacity } from '../../src/core/agent-protocol.ts';
import { powerHosts, queuedDemand } from '../../src/store/power.ts';

const spec = (over: Partial<JobSpec> = {}): JobSpec => ({
  tenant: 'default',
  requirements: DEFAULT_REQUIREMENTS,
  labels: [],
  image: 'default',
  command: ['echo', 'hi'],
  env: { A: 'b c' },
  timeoutMs: 60_000,
  network: 'none',
  priority: 0,
  ...over,
});
const cap = (name: string, over: Partial<HostCapacity> = {}): HostCapacity => ({
  name, arch: 'amd64', cpus: 8, memoryBytes: 32 * 1024 ** 3, diskBytes: 500 * 1024 ** 3, accel: 'tcg', labels: [], driver: 'memory', agentVersion: '0.1.0', ...over,
});
const wide = [{ arch: 'amd64' as const, maxCpus: 1e6, maxMemoryBytes: 1e15, maxDiskBytes: 1e15 }, { arch: 'arm64' as const, maxCpus: 1e6, maxMemoryBytes: 1e15, maxDiskBytes: 1e15 }];

for (const { kind, skip } of storeKinds()) {
  void describe(`store on ${kind}`, { skip }, () => {
    let store: Store;
    before(async () => {
      store = await makeTestStore(kind);
    });
    after(async () => {
      await store?.close();
    });

    void test('migrations are idempotent', async () => {
      await migrate(store.db);
      await migrate(store.db);
    });

    void test('jobs: search by id or text in command, labels, image, tenant; never env; LIKE characters are literal', async () => {
      const [a, b, c] = await insertJobs(store.db, [
        spec({ command: ['make', 'needle-target'], env: { SECRET: 'haystack-secret' }, tenant: 'srch' }),
        spec({ labels: ['kiln-Needle-label'], tenant: 'srch' }),
        spec({ command: ['echo', '100%_done'], tenant: 'srch' }),
      ]);
      const ids = async (text: string) => (await listJobs(store.db, { tenant: 'srch', text, limit: 100 })).map((j) => j.id).sort((x, y) => x - y);
      assert.deepEqual(await ids('needle'), [a!.id, b!.id], 'case-insensitive, command and labels');
      assert.deepEqual(await ids('haystack'), [], 'env values are not searched');
      assert.deepEqual(await ids(`#${c!.id}`), [c!.id]);
      assert.deepEqual(await ids('%_'), [c!.id], '% and _ match themselves');
      assert.deepEqual(await ids('0%'), [c!.id]);
      assert.deepEqual(await ids('_'), [c!.id]);
      assert.deepEqual(await ids('srch'), [a!.id, b!.id, c!.id], 'tenant');
    });

    void test('cache transfer: only a job that could write vouches for a committed version; the first submitted wins', async () => {
      const [ro, writer, late] = await insertJobs(store.db, [
        spec({ tenant: 'ctv', cache: { key: 'ctv/app', write: false } }),
        spec({ tenant: 'ctv', cache: { key: 'ctv/app', write: true, ref: 'refs/heads/main', commit: 'c0ffee', by: 'api token 1' } }),
        spec({ tenant: 'ctv', cache: { key: 'ctv/app', write: 'ask' } }),
      ]);
      const claim = (sha256: string, id = 'v-1'): CacheOutcomeMsg => ({ key: 'ctv/app', hit: true, committed: { id, bytes: 1, seconds: 0, sha256 } });
      await setCacheOutcome(store.db, ro!.id, ro!.attempt, claim('f'.repeat(64), 'v-ro'));
      assert.equal(await committedCacheVersion(store.db, 'ctv', 'ctv/app', 'v-ro'), undefined, 'a read-only job\'s host cannot vouch for a version');
      await setCacheOutcome(store.db, late!.id, late!.attempt, claim('b'.repeat(64)));
      await setCacheOutcome(store.db, writer!.id, writer!.attempt, claim('a'.repeat(64)));
      assert.deepEqual(await committedCacheVersion(store.db, 'ctv', 'ctv/app', 'v-1'), { jobId: writer!.id, sha256: 'a'.repeat(64), ref: 'refs/heads/main', commit: 'c0ffee', by: 'api token 1' }, 'the writer record is the job\'s own spec');
      assert.equal(await committedCacheVersion(store.db, 'other', 'ctv/app', 'v-1'), undefined, 'another tenant');
      // An 'ask' job vouches only with the server's own stored yes for its current attempt, and the ref and commit are the answer's.
      await setCacheOutcome(store.db, late!.id, late!.attempt, claim('c'.repeat(64), 'v-ask'));
      assert.equal(await committedCacheVersion(store.db, 'ctv', 'ctv/app', 'v-ask'), undefined, 'never answered');
      // A stored no may be replaced (the agent asks again only when it never heard it); a stored yes holds.
      const no = await setCacheAnswer(store.db, late!.id, late!.attempt, { write: false, reason: 'a fork' });
      assert.equal(no?.write, false);
      assert.equal(no?.reason, 'a fork');
      assert.equal(await committedCacheVersion(store.db, 'ctv', 'ctv/app', 'v-ask'), undefined, 'answered no');
      const no2 = await setCacheAnswer(store.db, late!.id, late!.attempt, { write: false, reason: 'the trust check failed' });
      assert.equal(no2?.reason, 'the trust check failed', 'a no is replaced by the next decision');
      assert.equal(await setCacheAnswer(store.db, late!.id, late!.attempt + 1, { write: true }), undefined, 'not its attempt: nothing stored');
      // A yes stored for another attempt does not vouch for this one, and does not block this attempt's answer.
      await sql`UPDATE jobs SET cache_answer = ${JSON.stringify({ attempt: late!.attempt + 1, write: true, at: new Date().toISOString() })}::jsonb WHERE id = ${late!.id}`.execute(store.db);
      assert.equal(await committedCacheVersion(store.db, 'ctv', 'ctv/app', 'v-ask'), undefined, 'a yes for another attempt');
      const yes = await setCacheAnswer(store.db, late!.id, late!.attempt, { write: true, ref: 'refs/heads/main', commit: 'abc123' });
      assert.deepEqual([yes?.write, yes?.ref, yes?.commit], [true, 'refs/heads/main', 'abc123']);
      assert.deepEqual(await committedCacheVersion(store.db, 'ctv', 'ctv/app', 'v-ask'), { jobId: late!.id, sha256: 'c'.repeat(64), ref: 'refs/heads/main', commit: 'abc123' });
      const late2 = await setCacheAnswer(store.db, late!.id, late!.attempt, { write: false, reason: 'the trust check failed' });
      assert.equal(late2?.write, true, 'a repeated ask does not take back a yes the agent may have acted on');
      assert.deepEqual(await committedCacheVersion(store.db, 'ctv', 'ctv/app', 'v-ask'), { jobId: late!.id, sha256: 'c'.repeat(64), ref: 'refs/heads/main', commit: 'abc123' }, 'still vouched');
      // leave nothing queued: the claims test below counts on which tenants wait
      for (const j of [ro, writer, late]) await requestCancel(store.db, j!.id);
    });

    void test('power: queued demand groups by cache key; a host\'s reported caches reach the power view', async () => {
      const queued = await insertJobs(store.db, [
        spec({ tenant: 'pwr', cache: { key: 'pwr/app', write: false } }),
        spec({ tenant: 'pwr', cache: { key: 'pwr/app', write: true } }),
        spec({ tenant: 'pwr', cache: { key: 'pwr/lib', write: false } }),
        spec({ tenant: 'pwr' }),
      ]);
      const demand = (await queuedDemand(store.db)).filter((d) => d.count > 0);
      const byKey = new Map<string, number>();
      for (const d of demand) byKey.set(d.cacheKey ?? '-', (byKey.get(d.cacheKey ?? '-') ?? 0) + d.count);
      assert.equal(byKey.get('pwr/app'), 2);
      assert.equal(byKey.get('pwr/lib'), 1);
      assert.ok((byKey.get('-') ?? 0) >= 1, 'jobs without a cache have no key');
      const h = await connectHost(store.db, cap('pwr-host'), 's-pwr');
      assert.ok(await setHostCaches(store.db, h.id, 's-pwr', [{ key: 'pwr/app', versions: 1, bytes: 1024, sizeBytes: 4096, lastUsedAt: new Date(0).toISOString() }]));
      const row = (await powerHosts(store.db)).find((x) => x.id === h.id);
      assert.deepEqual(row?.caches, ['pwr/app']);
      assert.deepEqual((await powerHosts(store.db)).find((x) => x.name !== 'pwr-host' && x.caches.length > 0), undefined);
      for (const j of queued) await requestCancel(store.db, j.id);
    });

    void test('jobs: what insertJobs returns is what the store then holds, in submission order', async () => {
      const specs = [
        spec({ cwd: '/w', submittedBy: 7, network: 'user', env: { K: 'v w', JSON: '{"a":1}' }, labels: ['kiln-arm64'], priority: 3 }),
        spec({ tenant: 'other', requirements: { ...DEFAULT_REQUIREMENTS, arch: 'arm64', hostLabels: ['gpu'] }, command: ['sh', '-c', 'exit 3'] }),
        ...Array.from({ length: 30 }, (_, i) => spec({ command: ['echo', String(i)] })),
      ];
      const got = await insertJobs(store.db, specs);
      assert.deepEqual(got.map((j) => j.command), specs.map((s) => s.command), 'results come back in submission order');
      assert.ok(got.every((j, i) => i === 0 || j.id > got[i - 1]!.id), 'ids ascend in submission order');
      for (const j of got) assert.deepEqual(j, await getJob(store.db, j.id));
      // What a claim reads and what placing returns are what the host needs: the launch spec of the stored job.
      const host = await connectHost(store.db, cap('t-launch', { arch: 'arm64' }), 's1');
      const [claimed] = (await store.withTransaction((tx) => claimQueuedJobs(tx, 1000, wide))).jobs.filter((c) => c.id === got[1]!.id);
      assert.deepEqual(claimed, { id: got[1]!.id, tenant: 'other', attempt: 1, createdAt: got[1]!.createdAt, requirements: got[1]!.requirements });
      const placed = await store.withTransaction((tx) => markPlaced(tx, [{ jobId: got[0]!.id, hostId: host.id }, { jobId: got[1]!.id, hostId: host.id }]));
      for (const p of placed) {
        const stored = (await getJob(store.db, p.id))!;
        assert.deepEqual(p, { id: p.id, attempt: 1, hostId: host.id, tenant: stored.tenant, egressRepo: null, launch: launchSpecOf(stored) });
      }
      assert.equal(placed.length, 2);
    });

    void test('jobs: submit, read, transitions each with a timestamp, result fields', async () => {
      const [job] = await insertJobs(store.db, [spec({ command: ['printf', 'ünï côdé'], cwd: '/w' })]);
      assert.ok(job);
      assert.equal(job.state, 'queued');
      assert.deepEqual(job.command, ['printf', 'ünï côdé']);
      assert.equal(job.cwd, '/w');
      const host = await connectHost(store.db, cap('t-jobs'), 's1');
      await store.withTransaction((tx) => markPlaced(tx, [{ jobId: job.id, hostId: host.id }]));
      assert.equal((await transitionJob(store.db, job.id, 1, { type: 'boot' }))?.job.state, 'booting');
      assert.equal((await transitionJob(store.db, job.id, 1, { type: 'start' }))?.job.state, 'running');
      // a stale attempt or an event the state does not accept changes nothing
      assert.equal(await transitionJob(store.db, job.id, 2, { type: 'exit', exitCode: 0 }), undefined);
      assert.equal(await transitionJob(store.db, job.id, 1, { type: 'boot' }), undefined);
      const done = await transitionJob(store.db, job.id, 1, { type: 'exit', exitCode: 3 }, { exitCode: 3 });
      assert.equal(done?.job.state, 'failed');
      assert.equal(done?.job.exitCode, 3);
      const got = await getJob(store.db, job.id);
      assert.ok(got?.placedAt && got.bootingAt && got.runningAt && got.finishedAt);
      const events = await jobTransitions(store.db, job.id);
      assert.deepEqual(events.map((e) => e.state), ['queued', 'placed', 'booting', 'running', 'failed']);
      assert.ok(events.every((e) => !Number.isNaN(Date.parse(e.at))));
      assert.ok((await listJobs(store.db, { states: ['failed'], limit: 10 })).some((j) => j.id === job.id));
      assert.equal((await listJobs(store.db, { states: ['failed'], tenant: 'nobody', limit: 10 })).length, 0);
      const counts = await countJobsByState(store.db);
      assert.ok(counts.failed >= 1);
    });

    void test('claims: fair across tenants, skip what cannot fit, never claim a job twice', async () => {
      const a = await insertJobs(store.db, Array.from({ length: 30 }, () => spec({ tenant: 'burst' })));
      const [b] = await insertJobs(store.db, [spec({ tenant: 'single' })]);
      const [arm] = await insertJobs(store.db, [spec({ tenant: 'single', requirements: { ...DEFAULT_REQUIREMENTS, arch: 'arm64' } })]);
      assert.ok(b && arm);
      const firstClaim = await store.withTransaction((tx) => claimQueuedJobs(tx, 4, wide.slice(0, 1)));
      const first = firstClaim.jobs;
      assert.equal(firstClaim.more, true, 'the claim says jobs beyond its batch remain queued');
      assert.ok(first.some((j) => j.id === b.id), 'the single job of another tenant comes in the first claims');
      assert.ok(!first.some((j) => j.id === arm.id), 'an arm64 job is not claimed when only amd64 room exists');
      // two claims at once see disjoint rows (SKIP LOCKED); PGlite serialises them, which is also disjoint
      const ids = new Set(a.map((j) => j.id));
      const host = await connectHost(store.db, cap('t-claims'), 's1');
      const claimAndPlace = () =>
        store.withTransaction(async (tx) => {
          const got = (await claimQueuedJobs(tx, 10, wide)).jobs.filter((j) => ids.has(j.id));
          await markPlaced(tx, got.map((j) => ({ jobId: j.id, hostId: host.id })));
          return got.map((j) => j.id);
        });
      const [x, y] = await Promise.all([claimAndPlace(), claimAndPlace()]);
      assert.equal(new Set([...x, ...y]).size, x.length + y.length, 'no job claimed by both');
      // placing already-placed jobs again changes nothing
      const again = await store.withTransaction((tx) => markPlaced(tx, x.map((jobId) => ({ jobId, hostId: host.id }))));
      assert.deepEqual(again, []);
      // A claim that takes every queued job says none remains; one whose window leaves arm64 out says one does.
      const all = await store.withTransaction((tx) => claimQueuedJobs(tx, 100_000, wide));
      assert.ok(all.jobs.some((j) => j.id === arm.id));
      assert.equal(all.more, false);
      const amdOnly = await store.withTransaction((tx) => claimQueuedJobs(tx, 100_000, wide.slice(0, 1)));
      assert.equal(amdOnly.more, true, 'the arm64 job is still queued');
    });

    void test('claims: a tenant already running jobs waits behind one running none; priority, then age, within a tenant', async () => {
      // A database of its own: the other tests leave queued jobs of their tenants behind.
      const st = await makeTestStore(kind);
      try {
        const host = await connectHost(st.db, cap('t-rank'), 's1');
        const place = (jobs: { id: number }[]) => st.withTransaction((tx) => markPlaced(tx, jobs.map((j) => ({ jobId: j.id, hostId: host.id }))));
        const claim = async (n: number) => (await st.withTransaction((tx) => claimQueuedJobs(tx, n, wide))).jobs.map((j) => j.id);
        await place(await insertJobs(st.db, Array.from({ length: 3 }, () => spec({ tenant: 'rank-busy' }))));
        const busy = await insertJobs(st.db, Array.from({ length: 3 }, () => spec({ tenant: 'rank-busy' })));
        const idle = await insertJobs(st.db, [spec({ tenant: 'rank-idle' }), spec({ tenant: 'rank-idle', priority: 5 }), spec({ tenant: 'rank-idle' })]);
        // rank-idle runs nothing, so its three come before rank-busy's (which runs three already); within
        // it, the job of priority 5 first, then by age.
        assert.deepEqual(await claim(3), [idle[1]!.id, idle[0]!.id, idle[2]!.id]);
        assert.deepEqual(await claim(6), [idle[1]!.id, idle[0]!.id, idle[2]!.id, ...busy.map((j) => j.id)]);
        // Both run three now; rank-idle's one queued job ties with rank-busy's first, and the tie goes to
        // the tenant served longest ago (rank-busy).
        await place(idle);
        const [late] = await insertJobs(st.db, [spec({ tenant: 'rank-idle' })]);
        assert.deepEqual(await claim(10), [busy[0]!.id, late!.id, busy[1]!.id, busy[2]!.id]);
        // One tenant alone: its jobs in age order.
        await place([late!]);
        assert.deepEqual(await claim(10), busy.map((j) => j.id));
      } finally {
        await st.close();
      }
    });

    void test('phases: batched, only from legal states, only from the job\'s host; both transitions kept', async () => {
      const host = await connectHost(store.db, cap('t-phase'), 's1');
      const [a, b] = await insertJobs(store.db, [spec({ tenant: 'ph', labels: ['kiln-2cpu', 'gpu'] }), spec({ tenant: 'ph' })]);
      assert.ok(a && b);
      await store.withTransaction((tx) => markPlaced(tx, [{ jobId: a.id, hostId: host.id }, { jobId: b.id, hostId: host.id }]));
      const changed = await applyPhases(store.db, [
        { jobId: a.id, attempt: 1, hostId: host.id, phase: 'booting' },
        { jobId: a.id, attempt: 1, hostId: host.id, phase: 'running' },
        { jobId: b.id, attempt: 1, hostId: host.id + 1000, phase: 'running' },
      ]);
      assert.deepEqual(changed.map((c) => [c.id, c.state, c.from, c.booted]), [[a.id, 'running', 'placed', true]]);
      // A start carries what the wait/boot figures need, as stored (times to the millisecond).
      const stored = await getJob(store.db, a.id);
      const started = changed[0]?.started;
      assert.ok(stored && started, 'a start returns its times');
      assert.deepEqual([started.arch, started.labels], [stored.requirements.arch, stored.labels]);
      for (const [got, want] of [[started.createdAt, stored.createdAt], [started.placedAt, stored.placedAt], [started.runningAt, stored.runningAt]] as const) {
        assert.ok(got && want && Math.abs(got.getTime() - Date.parse(want)) <= 1, `${got?.toISOString()} vs ${want}`);
      }
      assert.deepEqual((await jobTransitions(store.db, a.id)).map((e) => e.state), ['queued', 'placed', 'booting', 'running']);
      assert.equal((await getJob(store.db, b.id))?.state, 'placed');
      assert.deepEqual(await applyPhases(store.db, [{ jobId: a.id, attempt: 1, hostId: host.id, phase: 'booting' }]), [], 'no going back');
    });

    void test('two phase statements at once over the same jobs, given in opposite orders: no deadlock, every job ends running once', async () => {
      // The phase writer runs two at once on PostgreSQL; each statement takes its jobs in id order.
      const host = await connectHost(store.db, cap('t-concurrent-phases'), 's1');
      for (let round = 0; round < 5; round++) {
        const jobs = await insertJobs(store.db, Array.from({ length: 60 }, () => spec({ tenant: `conc-${round}` })));
        await store.withTransaction((tx) => markPlaced(tx, jobs.map((j) => ({ jobId: j.id, hostId: host.id }))));
        const up = jobs.map((j) => ({ jobId: j.id, attempt: 1, hostId: host.id }));
        const [booted, ran] = await Promise.all([
          applyPhases(store.db, up.map((u) => ({ ...u, phase: 'booting' as const }))),
          applyPhases(store.db, [...up].reverse().map((u) => ({ ...u, phase: 'running' as const }))),
        ]);
        assert.equal(ran.length, jobs.length, 'every start is stored');
        for (const j of jobs) {
          const states = (await jobTransitions(store.db, j.id)).map((e) => e.state);
          assert.ok(['queued,placed,booting,running', 'queued,placed,running'].includes(states.join()), `${j.id}: ${states.join()}`);
          assert.equal(booted.some((c) => c.id === j.id), states.includes('booting'));
        }
      }
    });

    void test('batches of every size: placing, phases, results and log sizes for 1, 8, 9 and 40 jobs at once', async () => {
      // Up to 8 rows travel as a VALUES list, more as one JSON parameter (batch-rows.ts): both must agree.
      const host = await connectHost(store.db, cap('t-sizes'), 's1');
      for (const n of [1, 8, 9, 40]) {
        const jobs = await insertJobs(store.db, Array.from({ length: n }, (_, i) => spec({ tenant: `sizes-${n}`, command: ['echo', String(i)] })));
        const placed = await store.withTransaction((tx) => markPlaced(tx, jobs.map((j) => ({ jobId: j.id, hostId: host.id })), 's1'));
        assert.deepEqual(placed.map((p) => [p.id, p.hostId, p.launch.command[1]]), jobs.map((j, i) => [j.id, host.id, String(i)]), `${n}: placed`);
        const booted = await applyPhases(store.db, jobs.map((j) => ({ jobId: j.id, attempt: 1, hostId: host.id, phase: 'booting' as const })));
        assert.equal(booted.length, n, `${n}: booting`);
        assert.ok(booted.every((c) => c.started === undefined), `${n}: a boot carries no start times`);
        const ran = await applyPhases(store.db, jobs.map((j) => ({ jobId: j.id, attempt: 1, hostId: host.id, phase: 'running' as const })));
        assert.deepEqual(ran.map((c) => [c.id, c.state, c.from]), jobs.map((j) => [j.id, 'running', 'booting']), `${n}: running`);
        assert.ok(ran.every((c) => c.started?.arch === 'amd64' && c.started.placedAt !== null && c.started.runningAt >= c.started.placedAt), `${n}: start times`);
        await store.withTransaction((tx) =>
          appendLogs(tx, jobs.map((j) => ({ jobId: j.id, attempt: 1, seq: 0, stream: 'stdout' as const, data: Buffer.from(`out ${j.id}\n`) })), 1 << 20),
        );
        const done = await transitionJobs(
          store.db,
          jobs.map((j, i) => ({ jobId: j.id, attempt: 1, choose: () => ({ event: { type: 'exit' as const, exitCode: i % 3 }, fields: { exitCode: i % 3 } }) })),
        );
        assert.deepEqual(done.map((d) => [d?.job.id, d?.job.state, d?.job.exitCode, d?.from, d?.job.command[1]]), jobs.map((j, i) => [j.id, i % 3 === 0 ? 'succeeded' : 'failed', i % 3, 'running', String(i)]), `${n}: results`);
        const stored = await Promise.all(jobs.map((j) => getJob(store.db, j.id)));
        assert.ok(stored.every((j) => j !== undefined && j.logBytes === `out ${j.id}\n`.length && j.finishedAt && j.runningAt && j.bootingAt && j.placedAt), `${n}: stored`);
      }
    });

    void test('exits: one statement; only the job\'s attempt on its host, only from an active state; the state left is reported', async () => {
      const host = await connectHost(store.db, cap('t-exit'), 's1');
      const other = await connectHost(store.db, cap('t-exit-2'), 's1');
      for (const n of [3, 12]) {
        const jobs = await insertJobs(store.db, Array.from({ length: n }, () => spec({ tenant: `exit-${n}` })));
        await store.withTransaction((tx) => markPlaced(tx, jobs.map((j) => ({ jobId: j.id, hostId: host.id }))));
        // job 0 stays placed, job 1 boots, the rest run
        await applyPhases(store.db, [{ jobId: jobs[1]!.id, attempt: 1, hostId: host.id, phase: 'booting' }]);
        await applyPhases(store.db, jobs.slice(2).map((j) => ({ jobId: j.id, attempt: 1, hostId: host.id, phase: 'running' as const })));
        const out = await recordExits(store.db, [
          ...jobs.map((j, i) => ({ jobId: j.id, attempt: 1, hostId: host.id, exitCode: i === 0 ? 0 : i })),
          { jobId: jobs[0]!.id, attempt: 2, hostId: host.id, exitCode: 0 }, // a stale attempt
          { jobId: jobs[1]!.id, attempt: 1, hostId: other.id, exitCode: 0 }, // another host
          { jobId: jobs[2]!.id, attempt: 1, hostId: host.id, exitCode: 2 }, // the same result twice in one batch
        ]);
        assert.deepEqual(
          out.slice(0, n).map((c) => [c?.job.id, c?.job.state, c?.job.exitCode, c?.from, c?.job.tenant]),
          jobs.map((j, i) => [j.id, i === 0 ? 'succeeded' : 'failed', i, i === 0 ? 'placed' : i === 1 ? 'booting' : 'running', `exit-${n}`]),
        );
        assert.deepEqual(out.slice(n), [undefined, undefined, undefined]);
        const stored = await getJob(store.db, jobs[1]!.id);
        assert.equal(stored?.state, 'failed');
        assert.equal(stored?.exitCode, 1);
        assert.ok(stored?.finishedAt);
        assert.deepEqual((await jobTransitions(store.db, jobs[2]!.id)).map((e) => e.state), ['queued', 'placed', 'running', 'failed']);
        // Once final, a repeated exit changes nothing.
        assert.deepEqual(await recordExits(store.db, [{ jobId: jobs[2]!.id, attempt: 1, hostId: host.id, exitCode: 0 }]), [undefined]);
        assert.equal((await getJob(store.db, jobs[2]!.id))?.state, 'failed');
      }
      // A queued job has no VM to exit.
      const [queued] = await insertJobs(store.db, [spec({ tenant: 'exit-q' })]);
      assert.deepEqual(await recordExits(store.db, [{ jobId: queued!.id, attempt: 1, hostId: host.id, exitCode: 0 }]), [undefined]);
    });

    void test('batched transitions: one read, one update; stale attempts and illegal events change nothing', async () => {
      const host = await connectHost(store.db, cap('t-batch'), 's1');
      const jobs = await insertJobs(store.db, [spec({ tenant: 'b' }), spec({ tenant: 'b' }), spec({ tenant: 'b' })]);
      await store.withTransaction((tx) => markPlaced(tx, jobs.map((j) => ({ jobId: j.id, hostId: host.id }))));
      const [a, b, c] = jobs as [Job, Job, Job];
      const out = await transitionJobs(store.db, [
        { jobId: a.id, attempt: 1, choose: () => ({ event: { type: 'exit', exitCode: 0 }, fields: { exitCode: 0 } }) },
        { jobId: b.id, attempt: 2, choose: () => ({ event: { type: 'exit', exitCode: 0 } }) },
        { jobId: c.id, attempt: 1, choose: () => ({ event: { type: 'requeue' } }) },
      ]);
      assert.equal(out[0]?.job.state, 'succeeded');
      assert.equal(out[0]?.from, 'placed');
      assert.equal(out[1], undefined);
      assert.equal(out[2], undefined);
      assert.deepEqual((await jobTransitions(store.db, a.id)).map((e) => e.state), ['queued', 'placed', 'succeeded']);
      assert.equal((await getJob(store.db, b.id))?.state, 'placed');
    });

    void test('tenant limits are read under lock', async () => {
      await setTenantLimit(store.db, 'limited', 2);
      const usage = await store.withTransaction((tx) => tenantUsage(tx, ['limited', 'unlimited']));
      assert.deepEqual(usage.get('limited'), { active: 0, limit: 2 });
      assert.equal(usage.has('unlimited'), false);
    });

    void test('lost jobs: requeued as a new attempt when never started, lost when they ran', async () => {
      const host = await connectHost(store.db, cap('t-lost'), 's1');
      const [p, r] = await insertJobs(store.db, [spec({ tenant: 'lost' }), spec({ tenant: 'lost' })]);
      assert.ok(p && r);
      await store.withTransaction((tx) => markPlaced(tx, [{ jobId: p.id, hostId: host.id }, { jobId: r.id, hostId: host.id }]));
      await transitionJob(store.db, r.id, 1, { type: 'start' });
      const lp = await loseJob(store.db, p.id, 1, 'host went away');
      assert.equal(lp?.requeued, true);
      assert.equal(lp?.job.state, 'queued');
      assert.equal(lp?.job.attempt, 2);
      assert.equal(lp?.job.hostId, null);
      const lr = await loseJob(store.db, r.id, 1, 'host went away');
      assert.equal(lr?.requeued, false);
      assert.equal(lr?.job.state, 'lost');
      assert.equal(await loseJob(store.db, p.id, 1, 'again'), undefined, 'a stale attempt is not lost twice');
      assert.deepEqual((await jobTransitions(store.db, p.id)).map((e) => `${e.attempt}:${e.state}`), ['1:queued', '1:placed', '1:lost', '2:queued']);
    });

    void test('cancel: queued at once, active jobs flagged for their host', async () => {
      const host = await connectHost(store.db, cap('t-cancel'), 's1');
      const [q, a] = await insertJobs(store.db, [spec({ tenant: 'c' }), spec({ tenant: 'c' })]);
      assert.ok(q && a);
      assert.equal((await requestCancel(store.db, q.id))?.job.state, 'cancelled');
      await store.withTransaction((tx) => markPlaced(tx, [{ jobId: a.id, hostId: host.id }]));
      const c = await requestCancel(store.db, a.id);
      assert.equal(c?.job.state, 'placed');
      assert.equal(c?.stopHost, host.id);
      const active = await activeJobsOnHosts(store.db, [host.id]);
      assert.equal(active.find((j) => j.id === a.id)?.cancelRequested, true);
      assert.equal(await requestCancel(store.db, 999_999), undefined);
    });

    void test('logs: order kept, replays ignored, the cap says when it was hit', async () => {
      const [job] = await insertJobs(store.db, [spec({ tenant: 'logs' })]);
      assert.ok(job);
      const bin = Buffer.from([0, 255, 10, 13, 128]);
      await store.withTransaction((tx) =>
        appendLogs(tx, [
          { jobId: job.id, attempt: 1, seq: 0, stream: 'stdout', data: Buffer.from('hello ') },
          { jobId: job.id, attempt: 1, seq: 1, stream: 'stderr', data: bin },
          { jobId: job.id, attempt: 1, seq: 0, stream: 'stdout', data: Buffer.from('hello ') },
        ], 20),
      );
      await store.withTransaction((tx) => appendLogs(tx, [{ jobId: job.id, attempt: 1, seq: 2, stream: 'stdout', data: Buffer.from('0123456789abcdef') }], 20));
      const chunks = await readLogs(store.db, job.id, 0, 100);
      assert.deepEqual(chunks.map((c) => c.stream), ['stdout', 'stderr', 'stdout', 'kiln']);
      assert.deepEqual(chunks[1]?.data, bin);
      assert.equal(Buffer.concat(chunks.filter((c) => c.stream !== 'kiln').map((c) => c.data)).length, 20);
      assert.match(chunks[3]?.data.toString() ?? '', /log limit of 20 bytes reached/);
      const after = await getJob(store.db, job.id);
      assert.equal(after?.logTruncated, true);
      assert.equal(after?.logBytes, 20);
      assert.equal((await readLogs(store.db, job.id, chunks[1]?.id ?? 0, 100)).length, 2);
    });

    void test('logs: a chunk after a hole is not stored until the hole is filled; replays settle; output stays in order', async () => {
      const [job] = await insertJobs(store.db, [spec({ tenant: 'holes' })]);
      assert.ok(job);
      const c = (seq: number) => ({ jobId: job.id, attempt: 1, seq, stream: 'stdout' as const, data: Buffer.from(`line ${seq}\n`) });
      const first = await store.withTransaction((tx) => appendLogs(tx, [c(0), c(1), c(3), c(4)], 1 << 20));
      assert.equal(first.settled.get(`${job.id}:1`), 1, 'chunks 3 and 4 wait for 2');
      assert.deepEqual(await storedLogSeq(store.db, job.id, 1), { seq: 1, truncated: false });
      // The agent resends from the hole (after a reconnect): 2, 3, 4, with 1 again as a replay.
      const second = await store.withTransaction((tx) => appendLogs(tx, [c(1), c(2), c(3), c(4)], 1 << 20));
      assert.equal(second.settled.get(`${job.id}:1`), 4);
      const text = (await readLogs(store.db, job.id, 0, 100)).map((x) => x.data.toString()).join('');
      assert.equal(text, [0, 1, 2, 3, 4].map((i) => `line ${i}\n`).join(''));
      // Output of an attempt that is not the job's is settled (never stored): the agent may forget it.
      const stale = await store.withTransaction((tx) => appendLogs(tx, [{ ...c(7), attempt: 2 }], 1 << 20));
      assert.equal(stale.settled.get(`${job.id}:2`), 7);
      assert.deepEqual(stale.changed, []);
    });

    void test('hosts: identity by name, owned by one replica, schedulable only online and uncordoned', async () => {
      const h = await connectHost(store.db, cap('t-host'), 's1');
      assert.equal(h.state, 'online');
      const again = await connectHost(store.db, cap('t-host', { cpus: 16 }), 's2');
      assert.equal(again.id, h.id);
      assert.equal(again.capacity.cpus, 16);
      assert.equal(await disconnectHost(store.db, h.id, 's1'), false, 'a replica that lost the host cannot mark it offline');
      const locked = await store.withTransaction((tx) => lockSchedulableHosts(tx, [h.id], 's2'));
      assert.deepEqual([...locked], [h.id]);
      await updateHostFlags(store.db, h.id, { cordoned: true });
      assert.equal((await store.withTransaction((tx) => lockSchedulableHosts(tx, [h.id], 's2'))).size, 0);
      await updateHostFlags(store.db, h.id, { drainRequested: true, state: 'draining', cordoned: false });
      assert.equal(await disconnectHost(store.db, h.id, 's2'), true);
      const back = await connectHost(store.db, cap('t-host'), 's1');
      assert.equal(back.state, 'draining', 'draining survives a reconnect');
      assert.ok((await listHosts(store.db)).some((x) => x.name === 't-host'));
      assert.equal((await findHost(store.db, String(h.id)))?.name, 't-host');
      assert.equal((await findHost(store.db, 't-host'))?.id, h.id);
    });

    void test('tokens: stored hashed, found by secret, revocable', async () => {
      const { token, secret } = await createToken(store.db, { name: 'ci', role: 'operator' });
      assert.match(secret, /^kiln_api_/);
      const rows = await store.db.selectFrom('tokens').select('secret_hash').where('id', '=', token.id).execute();
      assert.notEqual(rows[0]?.secret_hash, secret);
      assert.equal((await findTokenBySecret(store.db, secret))?.role, 'operator');
      assert.equal(await findTokenBySecret(store.db, `${secret}x`), undefined);
      await revokeToken(store.db, token.id);
      assert.equal(await findTokenBySecret(store.db, secret), undefined);
    });
  });
}
