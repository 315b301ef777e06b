// One scenario per edge-case row of specs/github.md, end to end: the GitHub double sends real-shaped signed
// webhooks to the real endpoint, kiln provisions JIT runners as VMs on a real agent (memory driver running
// the stand-in runner), and every scenario ends with the invariants (≤1 VM per job attempt, no runner
// without a VM and no VM without a runner, no secret in the logs) and a clean OpenAPI record.
import { describe, test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { isTerminal } from '../../src/core/job-state.ts';
import { assertInvariants, runnerVms, startGitHubHarness as startOn, until, type GitHubHarness } from './support/harness.ts';
import { storeKinds, type StoreKind } from '../store/test-stores.ts';

let h: GitHubHarness | undefined;
afterEach(async () => {
  if (!h) return;
  const v = h.double.violations;
  await h.close();
  h = undefined;
  assert.deepEqual(v, [], 'the double saw requests or sent responses that GitHub\'s description does not allow');
});

const ghJob = async (x: GitHubHarness, id: number) => x.store.db.selectFrom('github_jobs').selectAll().where('job_id', '=', id).executeTakeFirst();
const liveVms = async (x: GitHubHarness) => (await runnerVms(x)).filter((v) => !isTerminal(v.state));
const settled = async (x: GitHubHarness) => (await liveVms(x)).length === 0 && [...x.double.runners.values()].filter((r) => r.name.startsWith('kiln-')).length === 0;

for (const { kind, skip } of storeKinds()) {
void describe(`GitHub scenarios (${kind})`, { skip }, () => {
  const startGitHubHarness = (o: Parameters<typeof startOn>[0] = {}) => startOn({ kind: kind as StoreKind, ...o });
  // Every scenario runs on both stores (on PGlite, the default, they take ~40 s here, ~11 s on PostgreSQL).
  const scenario = (name: string, fn: () => Promise<void>) => test(name, fn);
  void scenario('queued kiln job: a runner VM takes it, runs it, exits; the runner is deregistered; usage recorded', async () => {
    h = await startGitHubHarness();
    const job = await h.double.queueJob('acme/app', ['self-hosted', 'kiln-4cpu-8gb']);
    await until('the job completed on GitHub', () => h!.double.jobs.get(job.id)?.status === 'completed');
    await until('the VM ended and the runner is gone', () => settled(h!));
    const vms = await runnerVms(h);
    assert.equal(vms.length, 1);
    assert.equal(vms[0]?.state, 'succeeded');
    const done = h.double.jobs.get(job.id)!;
    assert.match(done.runnerName ?? '', /^kiln-[0-9a-f]{12}$/);
    await until('the usage record is complete', async () => {
      const u = (await h!.client.request<{ usage: { jobId: number; completedAt: string | null }[] }>('GET', '/v1/github/usage')).usage.find((x) => x.jobId === job.id);
      return Boolean(u?.completedAt);
    });
    const { usage } = await h.client.request<{ usage: Record<string, unknown>[] }>('GET', '/v1/github/usage?repo=acme/app');
    const u = usage.find((x) => x.jobId === job.id)!;
    assert.equal(u.repo, 'acme/app');
    assert.equal(u.org, 'acme');
    assert.equal(u.workflow, 'CI');
    assert.deepEqual(u.labels, ['self-hosted', 'kiln-4cpu-8gb']);
    assert.equal(u.runnerName, done.runnerName);
    assert.equal(u.cpus, 4);
    assert.equal(u.memoryBytes, 8 * 1024 ** 3);
    assert.equal(typeof u.hostId, 'number');
    assert.equal(u.conclusion, 'success');
    assert.ok(u.queuedAt && u.startedAt && u.completedAt);
    assert.deepEqual(await assertInvariants(h), []);
    const env = await h.store.db.selectFrom('jobs').select('env').where('tenant', '=', 'github').execute();
    assert.ok(env.every((e) => !('KILN_RUNNER_JITCONFIG' in e.env)), 'the used JIT config is removed from the store');
    const jit = h.double.calls.filter((c) => c.path.endsWith('generate-jitconfig'));
    assert.deepEqual(jit.map((c) => c.status), [201]);
    // The ephemeral runner removed itself after its job (the double does as GitHub does): kiln asks nothing more.
    const deletes = h.double.calls.filter((c) => c.method === 'DELETE' && c.path.includes('/actions/runners/'));
    assert.deepEqual(deletes.map((c) => c.status), [], 'no removal call for a runner GitHub already removed');
  });

  void scenario('out of order: completed (or in_progress) before queued leaves a tombstone; waiting is not runnable', async () => {
    h = await startGitHubHarness();
    const a = await h.double.queueJob('acme/secret', ['kiln'], { send: false });
    a.status = 'completed';
    a.conclusion = 'cancelled';
    await h.double.sendWebhook(a, 'completed');
    await h.double.sendWebhook(a, 'queued');
    const b = await h.double.queueJob('acme/secret', ['kiln'], { send: false });
    b.status = 'in_progress';
    b.runnerName = 'someone';
    b.runnerId = 5;
    await h.double.sendWebhook(b, 'in_progress');
    await h.double.sendWebhook(b, 'queued');
    const w = await h.double.queueJob('acme/secret', ['kiln'], { waiting: true });
    await until('all deliveries are processed', async () => (await h!.store.db.selectFrom('github_deliveries').select('status').where('status', '=', 'pending').execute()).length === 0);
    await h.server.github!.pass();
    assert.equal((await ghJob(h, a.id))?.state, 'completed');
    assert.equal((await ghJob(h, b.id))?.state, 'in_progress');
    assert.equal((await ghJob(h, w.id))?.state, 'waiting');
    assert.equal((await runnerVms(h)).length, 0);
    const outcomes = (await h.store.db.selectFrom('github_deliveries').select('outcome').execute()).map((o) => o.outcome);
    assert.equal(outcomes.filter((o) => o === 'stale').length, 2);
  });

  void scenario('label mismatch is ignored; an unknown kiln label, a repository not allowed and a fork PR are refused with a visible reason', async () => {
    h = await startGitHubHarness();
    const hosted = await h.double.queueJob('acme/app', ['ubuntu-latest']);
    const unknown = await h.double.queueJob('acme/app', ['kiln-huge']);
    const other = await h.double.queueJob('other/thing', ['kiln']);
    const fork = await h.double.queueJob('acme/app', ['kiln'], { headRepo: 'evil/fork' });
    await until('four decisions', async () => {
      const rows = await h!.store.db.selectFrom('github_jobs').select('decision').where('decision', 'in', ['ignored', 'refused']).execute();
      return rows.length === 4;
    });
    const { jobs } = await h.client.request<{ jobs: { jobId: number; decision: string; reason: { code: string; message: string } | null }[] }>('GET', '/v1/github/jobs');
    const by = new Map(jobs.map((j) => [j.jobId, j]));
    assert.equal(by.get(hosted.id)?.decision, 'ignored');
    assert.equal(by.get(unknown.id)?.reason?.code, 'label.unknown');
    assert.equal(by.get(other.id)?.reason?.code, 'github.repo_not_allowed');
    assert.equal(by.get(fork.id)?.reason?.code, 'github.fork_pr');
    assert.match(by.get(fork.id)?.reason?.message ?? '', /evil\/fork/);
    assert.match(h.logs(), /GitHub job refused/);
    assert.equal((await runnerVms(h)).length, 0);
  });

  void scenario('fork pull requests run when the repository opts in', async () => {
    h = await startGitHubHarness({ config: { forkPrAllowed: ['acme/app'] } });
    const fork = await h.double.queueJob('acme/app', ['kiln'], { headRepo: 'evil/fork' });
    await until('it ran', () => h!.double.jobs.get(fork.id)?.status === 'completed');
    await until('settled', () => settled(h!));
    assert.deepEqual(await assertInvariants(h), []);
  });

  void scenario('cancelled before the VM boots: provisioning stops, the registration is deleted, the VM destroyed', async () => {
    h = await startGitHubHarness();
    h.double.faults.neverConnect = true;
    const job = await h.double.queueJob('acme/app', ['kiln']);
    await until('a runner VM is up', async () => (await liveVms(h!)).length === 1);
    await h.double.cancel(job.id);
    await until('everything is cleaned up', () => settled(h!));
    const [vm] = await runnerVms(h);
    // Stopped by kiln (cancelled), or by its runner exiting once its registration was deleted (failed).
    assert.ok(vm && ['cancelled', 'failed'].includes(vm.state), vm?.state);
    assert.deepEqual(await assertInvariants(h), []);
  });

  void scenario('job taken by another runner: ours stays for other demand, then goes after the idle grace', async () => {
    h = await startGitHubHarness({ config: { idleGraceMs: 600 } });
    h.double.faults.holdJobs = true;
    const job = await h.double.queueJob('acme/app', ['kiln']);
    await until('our runner is online', async () => (await h!.store.db.selectFrom('github_runners').select('state').where('state', '=', 'online').execute()).length === 1);
    await h.double.takeElsewhere(job.id);
    const gone = h.server.github!.events.waitFor('runner.state', (e) => e.state === 'stopping' && /idle/.test(e.reason ?? ''), 10_000);
    const t0 = Date.now();
    await gone;
    assert.ok(Date.now() - t0 >= 400, 'not before the idle grace');
    await until('cleaned up', () => settled(h!));
    assert.deepEqual(await assertInvariants(h), []);
  });

  void scenario('runner never comes online: registration deleted, VM destroyed, re-provisioned with backoff, then runs', async () => {
    h = await startGitHubHarness({ config: { bootTimeoutMs: 700 } });
    h.double.faults.neverConnect = true;
    const job = await h.double.queueJob('acme/app', ['kiln']);
    await h.server.github!.events.waitFor('runner.state', (e) => e.state === 'stopping' && /boot timeout/.test(e.reason ?? ''), 10_000);
    h.double.faults.neverConnect = false;
    await until('the job ran on a second runner', () => h!.double.jobs.get(job.id)?.status === 'completed', 20_000);
    await until('settled', () => settled(h!));
    const row = await ghJob(h, job.id);
    assert.equal(row?.failures, 1);
    assert.equal((await runnerVms(h)).length, 2);
    assert.deepEqual(await assertInvariants(h, { allowReprovision: true }), []);
  });

  void scenario('bounded retries: a runner that never comes online is given up after maxFailures, visibly', async () => {
    h = await startGitHubHarness({ config: { bootTimeoutMs: 300, maxFailures: 2, backoffBaseMs: 50 } });
    h.double.faults.neverConnect = true;
    const job = await h.double.queueJob('acme/app', ['kiln']);
    const refused = await h.server.github!.events.waitFor('job.refused', (e) => e.jobId === job.id, 20_000);
    assert.equal(refused.code, 'github.provision_failed');
    await until('settled', () => settled(h!));
    assert.equal((await runnerVms(h)).length, 2);
    assert.deepEqual(await assertInvariants(h, { allowReprovision: true }), []);
  });

  void scenario('runner vanished on GitHub while its VM is alive: the VM is destroyed', async () => {
    h = await startGitHubHarness();
    h.double.faults.holdJobs = true;
    await h.double.queueJob('acme/app', ['kiln']);
    await until('runner online', async () => (await h!.store.db.selectFrom('github_runners').select('state').where('state', '=', 'online').execute()).length === 1);
    const [r] = [...h.double.runners.values()];
    const [vm] = await liveVms(h);
    h.double.vanishRunner(r!.id);
    await until('its VM is destroyed', async () => !(await liveVms(h!)).some((v) => v.id === vm!.id));
    // The job is still queued on GitHub, so a new runner is made for it.
    await until('a new runner is starting for the job', async () => (await h!.store.db.selectFrom('github_runners').select('state').where('state', 'in', ['starting', 'online']).execute()).length === 1);
    assert.deepEqual(await assertInvariants(h, { allowReprovision: true }), []);
  });

  void scenario('runner offline but busy (orphan): its VM is destroyed, its registration removed once GitHub lets go', async () => {
    h = await startGitHubHarness();
    h.double.faults.holdJobs = true;
    const job = await h.double.queueJob('acme/app', ['kiln']);
    await until('runner online', async () => (await h!.store.db.selectFrom('github_runners').select('state').where('state', '=', 'online').execute()).length === 1);
    const [r] = [...h.double.runners.values()];
    // It took the job, then hung: GitHub sees it offline and busy.
    Object.assign(r!, { hung: true, status: 'offline', busy: true, jobId: job.id });
    Object.assign(h.double.jobs.get(job.id)!, { status: 'in_progress', runnerId: r!.id, runnerName: r!.name });
    await h.double.sendWebhook(h.double.jobs.get(job.id)!, 'in_progress');
    await until('the VM is destroyed while the registration is still busy', async () => (await liveVms(h!)).length === 0);
    assert.ok(h.double.runners.has(r!.id));
    await h.double.failJob(job.id);
    await until('the registration is removed', () => !h!.double.runners.has(r!.id));
    assert.deepEqual(await assertInvariants(h), []);
  });

  void scenario('409 on the first generate-jitconfig: the stray registration is removed, a new name registered', async () => {
    h = await startGitHubHarness();
    h.double.faults.jitConflict = 1;
    const job = await h.double.queueJob('acme/app', ['kiln']);
    await until('ran', () => h!.double.jobs.get(job.id)?.status === 'completed');
    await until('settled', () => settled(h!));
    assert.deepEqual(h.double.calls.filter((c) => c.path.endsWith('generate-jitconfig')).map((c) => c.status), [409, 201]);
    assert.equal(new Set(h.double.registeredNames).size, 2);
    assert.ok(h.double.calls.some((c) => c.method === 'DELETE' && c.status === 204));
    assert.deepEqual(await assertInvariants(h), []);
  });

  void scenario('installation token expiry: a 401 refreshes the token once and the call succeeds', async () => {
    h = await startGitHubHarness({ config: { reconcileMs: 100 } });
    h.double.faults.holdJobs = true;
    await h.double.queueJob('acme/app', ['kiln']);
    await until('runner online', async () => (await h!.store.db.selectFrom('github_runners').select('state').where('state', '=', 'online').execute()).length === 1);
    const mints = h.double.calls.filter((c) => c.path.endsWith('/access_tokens')).length;
    const from = h.double.calls.length;
    h.double.expireTokens();
    await until('a 401 was answered and then a success with a new token', () => {
      const later = h!.double.calls.slice(from);
      const i = later.findIndex((c) => c.status === 401);
      return i >= 0 && later.slice(i + 1).some((c) => c.status === 200 && c.path.includes('/actions/runners'));
    });
    assert.equal(h.double.calls.filter((c) => c.path.endsWith('/access_tokens')).length, mints + 1, 'one new token');
    assert.equal(h.double.calls.slice(from).filter((c) => c.status === 401).length, 1, 'refreshed once, not in a loop');
  });

  void scenario('installation tokens are refreshed ahead of expiry, before any 401', async () => {
    // Tokens live 5 min + 1 s; kiln refreshes when less than 5 min are left.
    h = await startGitHubHarness({ tokenTtlMs: 301_000, config: { reconcileMs: 100 } });
    h.double.faults.holdJobs = true;
    await h.double.queueJob('acme/app', ['kiln']);
    await until('a second token was minted', () => h!.double.calls.filter((c) => c.path.endsWith('/access_tokens') && c.status === 201).length >= 2);
    assert.equal(h.double.calls.filter((c) => c.status === 401).length, 0);
  });

  void scenario('stale installation id: re-resolved through GET /repos/{o}/{r}/installation', async () => {
    h = await startGitHubHarness();
    h.double.staleInstallations.set(41, 42);
    const job = await h.double.queueJob('acme/app', ['kiln'], { installationId: 41 });
    await until('ran', () => h!.double.jobs.get(job.id)?.status === 'completed');
    assert.ok(h.double.calls.some((c) => c.path === '/repos/acme/app/installation' && c.status === 200));
    assert.ok(h.double.calls.some((c) => c.path === '/app/installations/41/access_tokens' && c.status === 404));
  });

  void scenario('GitHub 5xx: retried on later passes', async () => {
    h = await startGitHubHarness();
    h.double.faults.fail.push({ re: /generate-jitconfig$/, status: 502, left: 2 });
    const job = await h.double.queueJob('acme/app', ['kiln']);
    await until('ran', () => h!.double.jobs.get(job.id)?.status === 'completed', 20_000);
    await until('settled', () => settled(h!));
    assert.deepEqual(await assertInvariants(h, { allowReprovision: true }), []);
  });

  void scenario('webhook lost: recovered from GET /app/hook/deliveries and redelivered with the same GUID', async () => {
    h = await startGitHubHarness();
    const job = await h.double.queueJob('acme/app', ['kiln'], { drop: true });
    const lost = h.double.deliveries.at(-1)!;
    await until('ran', () => h!.double.jobs.get(job.id)?.status === 'completed', 20_000);
    assert.ok(h.double.deliveries.some((d) => d.redelivery && d.guid === lost.guid && d.statusCode === 202));
    await until('settled', () => settled(h!));
    assert.deepEqual(await assertInvariants(h), []);
  });

  void scenario('VM lost while its runner is busy: DELETE answers 422 until GitHub lets go, then the registration goes', async () => {
    h = await startGitHubHarness({ jobMs: 60_000 });
    const job = await h.double.queueJob('acme/app', ['kiln']);
    await until('the runner is busy with the job', () => h!.double.jobs.get(job.id)?.status === 'in_progress');
    const [vm] = await liveVms(h);
    await h.client.request('POST', `/v1/jobs/${vm!.id}/cancel`);
    await until('kiln tried to remove the busy runner', () => h!.double.calls.some((c) => c.method === 'DELETE' && c.status === 422));
    assert.equal([...h.double.runners.values()].filter((r) => r.name.startsWith('kiln-')).length, 1, 'still registered while busy');
    await h.double.failJob(job.id);
    await until('the registration is removed', () => settled(h!));
    assert.ok(h.double.calls.some((c) => c.method === 'DELETE' && c.status === 204));
    assert.deepEqual(await assertInvariants(h), []);
  });

  void scenario('the JIT config is a credential: the jobs API never serves it back', async () => {
    h = await startGitHubHarness({ agent: false });
    await h.double.queueJob('acme/app', ['kiln']);
    await until('a runner VM is queued', async () => (await runnerVms(h!)).length === 1);
    const [vm] = await runnerVms(h);
    const one = await h.client.request<{ env: Record<string, string> }>('GET', `/v1/jobs/${vm!.id}`);
    assert.equal(one.env.KILN_RUNNER_JITCONFIG, '[secret]');
    const list = await h.client.request<{ jobs: { id: number; env?: Record<string, string> }[] }>('GET', '/v1/jobs');
    assert.ok(list.jobs.every((j) => j.env?.KILN_RUNNER_JITCONFIG === undefined || j.env.KILN_RUNNER_JITCONFIG === '[secret]'));
  });

  void scenario('a runner takes another job than the one it was made for: both jobs run, one VM each', async () => {
    h = await startGitHubHarness();
    h.double.faults.holdJobs = true;
    h.double.faults.newestFirst = true;
    const x = await h.double.queueJob('acme/app', ['kiln']);
    await until('the first runner is online', async () => (await h!.store.db.selectFrom('github_runners').select('state').where('state', '=', 'online').execute()).length === 1);
    const first = (await h.store.db.selectFrom('github_runners').select(['name', 'for_job_id']).executeTakeFirstOrThrow());
    assert.equal(first.for_job_id, x.id);
    const y = await h.double.queueJob('acme/app', ['kiln']);
    await until('a second runner is up', async () => (await liveVms(h!)).length === 2);
    const second = await h.store.db.selectFrom('github_runners').select(['name', 'for_job_id']).where('name', '<>', first.name).executeTakeFirstOrThrow();
    assert.equal(second.for_job_id, y.id);
    h.double.faults.heldRunners.add(second.name);
    h.double.faults.holdJobs = false;
    await until('the runner made for x took y', () => h!.double.jobs.get(y.id)?.status === 'in_progress');
    h.double.faults.heldRunners.clear();
    await until('both ran', () => h!.double.jobs.get(x.id)?.status === 'completed' && h!.double.jobs.get(y.id)?.status === 'completed', 20_000);
    assert.equal(h.double.jobs.get(y.id)?.runnerName, first.name, 'the runner made for x took y');
    assert.equal(h.double.jobs.get(x.id)?.runnerName, second.name, 'and the one made for y took x');
    await until('settled', () => settled(h!));
    assert.equal((await runnerVms(h)).length, 2);
    assert.deepEqual(await assertInvariants(h), []);
  });

  void scenario('organization-level runners: registered on the org, serving any allowed repository of it', async () => {
    h = await startGitHubHarness({ config: { runnerLevel: 'org' } });
    const job = await h.double.queueJob('acme/secret', ['kiln-4cpu-8gb']);
    await until('ran', () => h!.double.jobs.get(job.id)?.status === 'completed');
    await until('settled', () => settled(h!));
    assert.ok(h.double.calls.some((c) => c.path === '/orgs/acme/actions/runners/generate-jitconfig' && c.status === 201));
    assert.deepEqual(await assertInvariants(h), []);
  });

  void scenario('capacity full: jobs wait and run when capacity frees', async () => {
    h = await startGitHubHarness({ config: { maxRunners: 1 } });
    const a = await h.double.queueJob('acme/app', ['kiln']);
    const b = await h.double.queueJob('acme/app', ['kiln']);
    await until('both ran', () => h!.double.jobs.get(a.id)?.status === 'completed' && h!.double.jobs.get(b.id)?.status === 'completed', 20_000);
    await until('settled', () => settled(h!));
    assert.equal((await runnerVms(h)).length, 2);
    assert.deepEqual(await assertInvariants(h), []);
  });
});
}
