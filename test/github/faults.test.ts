// The faults of issue 15, each as a scenario on the GitHub double that failed before it was mended: a runner
// that ends before it takes a job (its command missing, its image missing) is counted, backed off and given
// up; a rate-limit answer holds every call until GitHub's reset; late deliveries after a re-read still bind
// the runner and complete the usage record; a burst played through online/busy/done, its deliveries behind
// its runners, registers exactly one runner per job (plus one per runner that really failed) and retires
// none that is still starting.
import { describe, test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { KilnError } from '../../src/core/errors.ts';
import { memoryImageResolver, type ImageResolver } from '../../src/agent/images.ts';
import { makeMemoryDriver, type GuestProgram } from '../../src/vm/memory-driver.ts';
import { assertInvariants, runnerVms, startGitHubHarness as startOn, until, type GitHubHarness } from './support/harness.ts';
import { standInRunner, STAND_IN_NAME } from './support/stand-in-runner.ts';
import { storeKinds, type StoreKind } from '../store/test-stores.ts';
import { isTerminal } from '../../src/core/job-state.ts';

let h: GitHubHarness | undefined;
afterEach(async () => {
  if (!h) return;
  const v = h.double.violations;
  await h.close();
  h = undefined;
  assert.deepEqual(v, [], "the double saw requests or sent responses that GitHub's description does not allow");
});

const jitCalls = (x: GitHubHarness) => x.double.calls.filter((c) => c.path.endsWith('generate-jitconfig')).length;
const settled = async (x: GitHubHarness) =>
  (await runnerVms(x)).every((v) => isTerminal(v.state)) && [...x.double.runners.values()].filter((r) => r.name.startsWith('kiln-')).length === 0;
const ghJobs = async (x: GitHubHarness) =>
  (await x.client.request<{ jobs: { jobId: number; decision: string; failures: number; reason: { code: string } | null }[] }>('GET', '/v1/github/jobs')).jobs;
const usage = async (x: GitHubHarness) => (await x.client.request<{ usage: Record<string, unknown>[] }>('GET', '/v1/github/usage')).usage;
const incomplete = (u: Record<string, unknown>) => ['runnerName', 'kilnJobId', 'hostId', 'cpus', 'memoryBytes', 'conclusion', 'queuedAt', 'startedAt', 'completedAt'].filter((k) => u[k] === null || u[k] === undefined);
const BIG = { cpus: 512, memoryBytes: 4096 * 1024 ** 3 };

for (const { kind, skip } of storeKinds()) {
  void describe(`GitHub faults (${kind})`, { skip }, () => {
    const startGitHubHarness = (o: Parameters<typeof startOn>[0] = {}) => startOn({ kind: kind as StoreKind, ...o });

    void test('runner command exits 127 on every VM: bounded registrations, then given up visibly; a later job is still served', async () => {
      const programs: Record<string, GuestProgram> = {};
      h = await startGitHubHarness({
        config: { runnerCommand: ['kiln-runner-missing'], maxFailures: 3, backoffBaseMs: 50, backoffMaxMs: 200 },
        driver: makeMemoryDriver({ ...BIG, programs }),
      });
      const failed: string[] = [];
      h.server.github!.events.on('runner.failed', (e) => failed.push(e.code));
      const job = await h.double.queueJob('acme/app', ['kiln']);
      const refused = await h.server.github!.events.waitFor('job.refused', (e) => e.jobId === job.id, 30_000);
      assert.equal(refused.code, 'github.provision_failed');
      assert.deepEqual(failed, ['github.runner_exited', 'github.runner_exited', 'github.runner_exited']);
      await until('settled', () => settled(h!));
      // Given up: no more registrations for it, however many passes run.
      const jit = jitCalls(h);
      assert.equal(jit, 3);
      const n = (await h.server.github!.events.waitFor('pass.done')).n;
      await h.server.github!.events.waitFor('pass.done', (e) => e.n >= n + 5);
      assert.equal(jitCalls(h), 3);
      const row = (await ghJobs(h)).find((j) => j.jobId === job.id);
      assert.equal(row?.decision, 'refused');
      assert.equal(row?.failures, 3);
      assert.equal(row?.reason?.code, 'github.provision_failed');
      assert.match(h.logs(), /GitHub job given up/);
      const metric = await h.server.ctx.metrics.registry.getSingleMetricAsString('kiln_github_runner_failures_total');
      assert.match(metric, /kiln_github_runner_failures_total\{code="github.runner_exited"\} 3/);
      // The operator fixes the image: a new job runs.
      programs['kiln-runner-missing'] = standInRunner;
      const next = await h.double.queueJob('acme/app', ['kiln']);
      await until('the new job ran', () => h!.double.jobs.get(next.id)?.status === 'completed', 30_000);
      await until('settled', () => settled(h!));
      assert.deepEqual(await assertInvariants(h, { allowReprovision: true }), []);
    });

    void test('runner image missing on the host: each launch failure counts, then the job is given up', async () => {
      h = await startGitHubHarness({
        config: { maxFailures: 2, backoffBaseMs: 50, backoffMaxMs: 200 },
        images: async (image, arch) => {
          if (image === 'runner') throw new KilnError('image.not_found', 'no image "runner" on this host');
          return memoryImageResolver(image, arch);
        },
      });
      const failed: string[] = [];
      h.server.github!.events.on('runner.failed', (e) => failed.push(e.code));
      const job = await h.double.queueJob('acme/app', ['kiln']);
      const refused = await h.server.github!.events.waitFor('job.refused', (e) => e.jobId === job.id, 30_000);
      assert.equal(refused.code, 'github.provision_failed');
      assert.match(refused.reason, /after 2 attempt/);
      assert.equal(failed.length, 2);
      assert.ok(failed.every((c) => c === 'image.not_found'), failed.join(','));
      await until('settled', () => settled(h!));
      assert.equal(jitCalls(h), 2);
      assert.deepEqual(await assertInvariants(h, { allowReprovision: true }), []);
    });

    void test('one host lacks the runner image, another has it: after the first failure the job is served by the second host', async () => {
      const missing: ImageResolver = async (image, arch) => {
        if (image === 'runner') throw new KilnError('image.not_found', 'no image "runner" on this host');
        return memoryImageResolver(image, arch);
      };
      // host-1 (registered first, so first in placement's tie-break between equal fits) cannot run the runner.
      h = await startGitHubHarness({ config: { maxFailures: 3, backoffBaseMs: 50, backoffMaxMs: 200 }, images: missing, extraAgents: [{}] });
      const failed: string[] = [];
      h.server.github!.events.on('runner.failed', (e) => failed.push(e.code));
      const hostIds = new Map((await h.client.request<{ hosts: { id: number; name: string }[] }>('GET', '/v1/hosts')).hosts.map((x) => [x.name, x.id]));
      const job = await h.double.queueJob('acme/app', ['kiln']);
      await until('the job ran', () => h!.double.jobs.get(job.id)?.status === 'completed', 30_000);
      assert.deepEqual(failed, ['image.not_found'], 'one failed attempt on host-1, then host-2');
      await until('settled', () => settled(h!));
      const vms = await h.store.db.selectFrom('jobs').select(['id', 'host_id', 'state']).where('tenant', '=', 'github').orderBy('id').execute();
      assert.deepEqual(
        vms.map((v) => [v.host_id, v.state]),
        [
          [hostIds.get('host-1'), 'failed'],
          [hostIds.get('host-2'), 'succeeded'],
        ],
      );
      // The usage record is filled from the job's deliveries: let them all be processed.
      await until('every delivery processed', async () => (await h!.store.db.selectFrom('github_deliveries').select('status').where('status', '=', 'pending').execute()).length === 0);
      const u = (await usage(h)).find((x) => x.jobId === job.id)!;
      assert.equal(u.hostId, hostIds.get('host-2'));
      // The next job goes to host-2 at once: host-1 is still de-preferred.
      const next = await h.double.queueJob('acme/app', ['kiln']);
      await until('the next job ran', () => h!.double.jobs.get(next.id)?.status === 'completed', 30_000);
      assert.deepEqual(failed, ['image.not_found'], 'no new failure');
      assert.match(h.logs(), /launch failed on host; other hosts preferred for a while/);
      await until('settled', () => settled(h!));
      assert.deepEqual(await assertInvariants(h, { allowReprovision: true }), []);
    });

    void test('a surplus of 1: an idle runner is kept ready per label set, the next job takes it, registrations stay within jobs + surplus', async () => {
      h = await startGitHubHarness({ config: { spareRunners: 1 } });
      const runners = async () => (await h!.client.request<{ runners: { name: string; state: string; ghJobId: number | null }[] }>('GET', '/v1/github/runners')).runners;
      const first = await h.double.queueJob('acme/secret', ['kiln']);
      await until('the first job ran', () => h!.double.jobs.get(first.id)?.status === 'completed', 30_000);
      await until('one idle runner is online for the label set', async () => {
        const live = await runners();
        return live.length === 1 && live[0]!.state === 'online' && live[0]!.ghJobId === null;
      });
      const ready = (await runners())[0]!.name;
      const regs = h.double.registeredNames.length;
      assert.ok(regs <= 2, `${regs} registrations for 1 job and a surplus of 1`);
      // The next job is taken by the runner that was already online, and a new spare takes its place.
      const second = await h.double.queueJob('acme/secret', ['kiln']);
      await until('the second job ran', () => h!.double.jobs.get(second.id)?.status === 'completed', 30_000);
      assert.equal(h.double.jobs.get(second.id)?.runnerName, ready, 'the spare took the job');
      await until('the surplus is restored', async () => {
        const live = await runners();
        return live.length === 1 && live[0]!.state === 'online' && live[0]!.name !== ready;
      });
      assert.ok(h.double.registeredNames.length <= 3, `${h.double.registeredNames.length} registrations for 2 jobs and a surplus of 1`);
      // Kept, not retired after the idle grace (300 ms here): still the same one a while later.
      const kept = (await runners())[0]!.name;
      let passes = 0;
      const off = h.server.github!.events.on('pass.done', () => passes++);
      const t0 = Date.now();
      await until('three idle graces and ten passes went by', () => Date.now() - t0 > 1_000 && passes >= 10);
      off();
      assert.deepEqual((await runners()).map((r) => [r.name, r.state]), [[kept, 'online']]);
      assert.deepEqual(await assertInvariants(h), []);
    });

    void test('a rate-limit answer holds every GitHub call until the reset, then kiln resumes', async () => {
      h = await startGitHubHarness();
      const reset = Math.ceil(Date.now() / 1000) + 2;
      h.double.faults.fail.push({
        re: /generate-jitconfig$/,
        status: 403,
        left: 1,
        message: 'API rate limit exceeded for installation.',
        headers: { 'x-ratelimit-limit': '5000', 'x-ratelimit-remaining': '0', 'x-ratelimit-used': '5000', 'x-ratelimit-reset': String(reset) },
      });
      const held = h.server.github!.events.waitFor('api.throttled', () => true, 20_000);
      const job = await h.double.queueJob('acme/app', ['kiln']);
      const t = await held;
      assert.ok(t.untilMs >= reset * 1000 - 1000, 'held until GitHub said');
      const limited = h.double.calls.findIndex((c) => c.status === 403);
      await until('the job ran', () => h!.double.jobs.get(job.id)?.status === 'completed', 30_000);
      const after = h.double.calls.slice(limited + 1);
      assert.ok(after.length > 0);
      assert.ok(after[0]!.at >= reset * 1000 - 1000, `no call before the reset (first after ${after[0]!.at - reset * 1000} ms)`);
      const row = (await ghJobs(h)).find((j) => j.jobId === job.id);
      assert.equal(row?.failures, 0, "kiln's wait is not the job's failure");
      await until('settled', () => settled(h!));
      assert.deepEqual(await assertInvariants(h), []);
    });

    void test('kiln re-reads a job before its in_progress and completed deliveries arrive: the runner is still bound, the usage record complete', async () => {
      h = await startGitHubHarness({ config: { recheckMs: 200 } });
      h.double.faults.dropActions.add('in_progress');
      h.double.faults.dropActions.add('completed');
      const job = await h.double.queueJob('acme/app', ['kiln-2cpu-4gb']);
      await until('the job ran on GitHub', () => h!.double.jobs.get(job.id)?.status === 'completed', 30_000);
      await until('kiln read it as completed', async () => (await ghJobs(h!)).find((j) => j.jobId === job.id) !== undefined && (await h!.store.db.selectFrom('github_jobs').select('state').where('job_id', '=', job.id).executeTakeFirst())?.state === 'completed');
      // Now the late deliveries (GitHub's redelivery, or the App's hook catching up).
      h.double.faults.dropActions.clear();
      for (const d of h.double.deliveries.filter((x) => x.statusCode === 502)) assert.ok([200, 202].includes(await h.double.post(d)));
      await until('every delivery processed', async () => (await h!.store.db.selectFrom('github_deliveries').select('status').where('status', '=', 'pending').execute()).length === 0);
      await until('settled', () => settled(h!));
      const u = (await usage(h)).find((x) => x.jobId === job.id)!;
      assert.deepEqual(incomplete(u), [], JSON.stringify(u));
      assert.equal(u.runnerName, h.double.jobs.get(job.id)?.runnerName);
      assert.equal(u.cpus, 2);
      const runners = (await h.client.request<{ runners: { name: string; ghJobId: number | null; lastError: string | null }[] }>('GET', '/v1/github/runners?all=true')).runners;
      assert.equal(runners.find((r) => r.name === u.runnerName)?.ghJobId, job.id, 'the runner is bound to the job it ran');
      assert.deepEqual(await assertInvariants(h), []);
    });

    void test('jobs waiting for runner budget are read from GitHub once each (admission), never again while they wait', async () => {
      // Two runners at a time for twelve jobs that take 300 ms each: most jobs wait several recheck intervals.
      h = await startGitHubHarness({ config: { maxRunners: 2, recheckMs: 300 }, jobMs: 300 });
      const jobs = await Promise.all(Array.from({ length: 12 }, () => h!.double.queueJob('acme/secret', ['kiln'])));
      await until('every job ran', () => jobs.every((j) => h!.double.jobs.get(j.id)?.status === 'completed'), 60_000);
      await until('settled', () => settled(h!));
      const reads = h.double.calls.filter((c) => c.method === 'GET' && /\/actions\/jobs\/\d+$/.test(c.path));
      // At most once each: GitHub gives a queued job to any idle runner with its labels, so a runner kiln
      // registered for one job may take another that kiln had not read yet; that one is known from its
      // deliveries and never needs the read. None is read again while it waits.
      const perJob = new Map<string, number>();
      for (const c of reads) perJob.set(c.path, (perJob.get(c.path) ?? 0) + 1);
      assert.deepEqual([...perJob].filter(([, n]) => n > 1), [], 'a job was read more than once');
      assert.ok(reads.length >= jobs.length / 2 && reads.length <= jobs.length, `GET job calls: ${reads.length} for ${jobs.length} jobs`);
      assert.equal(jitCalls(h), jobs.length);
      const metric = await h.server.ctx.metrics.registry.getSingleMetricAsString('kiln_github_job_reads_total');
      assert.match(metric, new RegExp(`kiln_github_job_reads_total\\{why="admission"\\} ${reads.length}\\b`));
      assert.doesNotMatch(metric, /why="(unheard|idle)_runner"/);
      assert.deepEqual(await assertInvariants(h), []);
    });

    void test('a job cancelled while its runner idles, its delivery lost and not redelivered: the idle runner makes kiln read the job, and the runner goes', async () => {
      h = await startGitHubHarness({ config: { recheckMs: 500, idleGraceMs: 300 } });
      h.double.faults.holdJobs = true;
      // GitHub's delivery list unavailable: no redelivery rescues the lost delivery.
      h.double.faults.fail.push({ re: /^\/app\/hook\/deliveries/, status: 503, left: 1_000_000 });
      const job = await h.double.queueJob('acme/secret', ['kiln']);
      await until('our runner is online', async () => (await h!.store.db.selectFrom('github_runners').select('state').where('state', '=', 'online').execute()).length === 1);
      h.double.faults.dropActions.add('completed');
      await h.double.cancel(job.id);
      await until('kiln read the job as completed', async () => (await h!.store.db.selectFrom('github_jobs').select('state').where('job_id', '=', job.id).executeTakeFirst())?.state === 'completed');
      await until('settled', () => settled(h!));
      const metric = await h.server.ctx.metrics.registry.getSingleMetricAsString('kiln_github_job_reads_total');
      assert.match(metric, /why="idle_runner"\} [1-9]/);
      assert.equal(jitCalls(h), 1, 'no runner registered again for the cancelled job');
      assert.deepEqual(await assertInvariants(h), []);
    });

    void test('a burst played through online, busy and done while the double sends its own deliveries: exactly one registration per job, none retired while starting, every usage record complete', async () => {
      const N = 300;
      // The runner VMs' own account of how each runner ended, kept apart from kiln and from the double: a
      // runner that failed for real (could not connect, crashed) is one kiln may rightly replace.
      const reallyFailed: string[] = [];
      const observed: GuestProgram = async (a) => {
        const status = await standInRunner(a);
        if (status !== 0 && !a.signal.aborted) reallyFailed.push(`${a.env.KILN_RUNNER_NAME ?? '?'}: exit ${status}`);
        return status;
      };
      h = await startGitHubHarness({ config: { idleGraceMs: 2_000, bootTimeoutMs: 60_000 }, driver: makeMemoryDriver({ ...BIG, programs: { [STAND_IN_NAME]: observed } }) });
      h.double.faults.newestFirst = true;
      const last = new Map<string, string>();
      const churn: string[] = [];
      const history = new Map<string, string[]>();
      h.server.github!.events.on('runner.state', (e) => {
        const before = last.get(e.name);
        // Retired before it came online while its label set still had queued jobs (a runner whose label set
        // has no queued job left may go: 'no queued job of its label set is left').
        if (e.state === 'stopping' && (before === 'pending' || before === 'starting') && !/no queued job of its label set/.test(e.reason ?? '')) churn.push(`${e.name}: ${e.reason ?? ''}`);
        last.set(e.name, e.state);
        history.set(e.name, [...(history.get(e.name) ?? []), e.reason ? `${e.state} (${e.reason})` : e.state]);
      });
      const failed: string[] = [];
      h.server.github!.events.on('runner.failed', (e) => failed.push(`${e.name}: ${e.code}`));
      const jobs = await Promise.all(Array.from({ length: N }, (_, i) => h!.double.queueJob(i % 3 === 0 ? 'acme/secret' : 'acme/app', [i % 2 === 0 ? 'kiln' : 'kiln-2cpu-4gb'])));
      await until('every job ran', () => jobs.every((j) => h!.double.jobs.get(j.id)?.status === 'completed'), 180_000);
      await until('settled', () => settled(h!), 60_000);
      await until('every delivery processed', async () => (await h!.store.db.selectFrom('github_deliveries').select('status').where('status', '=', 'pending').execute()).length === 0);
      // A runner kiln still thought starting may have run its job already (fast jobs, deliveries behind):
      // only runners that ran nothing count as churn.
      const ran = new Set(jobs.map((j) => h!.double.jobs.get(j.id)?.runnerName));
      assert.deepEqual(churn.filter((c) => !ran.has(c.split(':')[0])), [], 'no runner was retired while it was still starting');
      // Exactly the runners the queue needed: one per job, plus one replacement per runner that really failed.
      // Registrations as GitHub (the double) counted them; each one that ran no job is named with kiln's
      // account of it.
      const wasted = h.double.registeredNames.filter((n) => !ran.has(n)).map((n) => `${n}: ${(history.get(n) ?? []).join(' → ')}`);
      assert.equal(h.double.registeredNames.length, N + reallyFailed.length, `${h.double.registeredNames.length} registrations for ${N} jobs and ${reallyFailed.length} runners that really failed (${reallyFailed.join('; ')}); runners that ran no job: ${wasted.join('; ')}`);
      assert.equal(failed.length, reallyFailed.length, `kiln counted ${failed.length} failed runners (${failed.join('; ')}), the VMs ${reallyFailed.length}`);
      const records = (await usage(h)).filter((u) => jobs.some((j) => j.id === u.jobId));
      assert.equal(records.length, N);
      const bad = records.filter((u) => incomplete(u).length > 0).map((u) => `${String(u.jobId)}: ${incomplete(u).join(',')}`);
      assert.deepEqual(bad, [], 'every usage record is complete');
      assert.deepEqual(await assertInvariants(h), []);
    });
  });
}
