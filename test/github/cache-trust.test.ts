// Trusted write-back of warm caches for GitHub jobs (docs/caches.md), end to end: the GitHub double sends
// signed webhooks for jobs with a `kiln-cache-KEY` label, kiln runs each on a real agent (memory driver, a real
// cache store on disk: the lease, the overlay and the commit are real; only the guest is simulated), the agent
// asks the server after the job (cache.ask), and the server decides from the GitHub job the runner ran, reading
// the run, the repository's default branch and its refs from the double (every answer checked against GitHub's
// OpenAPI description). Each case is checked as the agent received the answer (the job result's cache outcome)
// and as the host's cache store holds it (a committed version with its ref and commit, or none).
import { describe, test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { makeCacheStore, type CacheStore } from '../../src/vm/cache-store.ts';
import type { JobResultMsg } from '../../src/core/agent-protocol.ts';
import type { GitHubConfig } from '../../src/server/github/config.ts';
import { assertInvariants, runnerVms, startGitHubHarness as startOn, until, type GitHubHarness } from './support/harness.ts';
import { storeKinds, type StoreKind } from '../store/test-stores.ts';
import { isTerminal } from '../../src/core/job-state.ts';
import { committedCacheVersion } from '../../src/store/jobs.ts';

/** No runner VM is live and no kiln runner is registered on GitHub (the end state every test waits for). */
const settled = async (x: GitHubHarness) =>
  (await runnerVms(x)).every((v) => isTerminal(v.state)) && [...x.double.runners.values()].every((r) => !r.name.startsWith('kiln-'));

let h: GitHubHarness | undefined;
let dir: string | undefined;
afterEach(async () => {
  if (h) {
    const v = h.double.violations;
    await h.close();
    h = undefined;
    assert.deepEqual(v, [], 'the double saw requests or sent responses that GitHub\'s description does not allow');
  }
  if (dir) rmSync(dir, { recursive: true, force: true });
  dir = undefined;
});

type CacheOutcome = NonNullable<JobResultMsg['cache']>;

const sha = (c: string) => c.repeat(40).slice(0, 40);

/** A harness whose agent keeps caches in a temp dir, and every job result's cache outcome by cache key. */
async function start(kind: StoreKind, config: Partial<GitHubConfig>): Promise<{ caches: CacheStore; outcomes: Map<string, { jobId: number; cache: CacheOutcome }>; results: { jobId: number; cache: CacheOutcome }[] }> {
  dir = mkdtempSync(join(tmpdir(), 'kiln-gh-cache-'));
  const caches = makeCacheStore(dir);
  h = await startOn({ kind, caches, config });
  const outcomes = new Map<string, { jobId: number; cache: CacheOutcome }>();
  const results: { jobId: number; cache: CacheOutcome }[] = [];
  h.agent!.events.on('finished', (r: JobResultMsg) => {
    if (!r.cache) return;
    outcomes.set(r.cache.key, { jobId: r.jobId, cache: r.cache });
    results.push({ jobId: r.jobId, cache: r.cache });
  });
  return { caches, outcomes, results };
}

for (const { kind, skip } of storeKinds()) {
  void describe(`GitHub cache write-back (${kind})`, { skip }, () => {
    void test('the server decides from the run: default branch, configured branch, allowed tag write; everything else reads only', async () => {
      const { caches, outcomes } = await start(kind as StoreKind, {
        cacheWriteBranches: ['acme/app:release'],
        cacheWriteTags: ['acme/app:v*'],
        forkPrAllowed: ['acme/open'],
      });
      const d = h!.double;
      // acme/app's default branch is not `main`: kiln must read it from GitHub, not assume it.
      const app = d.repos.get('acme/app')!;
      app.defaultBranch = 'trunk';
      for (const b of ['feature', 'release', 'v2']) app.branches.set(b, sha('b'));
      for (const t of ['v1.0.0', 'v2', 'nightly']) app.tags.set(t, sha('c'));
      d.addRepo('acme/open');
      d.addRepo('acme/lib', { private: true }).tags.set('main', sha('d')).set('v1.0.0', sha('d'));
      d.addRepo('acme/vault', { private: true });
      // GitHub failing when kiln asks: the run (acme/secret) or the refs (acme/vault, an App without Contents: read).
      d.faults.fail.push({ re: /^\/repos\/acme\/secret\/actions\/runs\//, status: 502, left: 1000, message: 'Server Error' });
      d.faults.fail.push({ re: /^\/repos\/acme\/vault\/git\/ref\//, status: 403, left: 1000, message: 'Resource not accessible by integration' });

      const cases: { key: string; repo: string; o: Parameters<typeof d.queueJob>[2]; write: RegExp | false }[] = [
        { key: 'default', repo: 'acme/app', o: { headBranch: 'trunk', headSha: sha('1') }, write: /^refs\/heads\/trunk$/ },
        { key: 'feature', repo: 'acme/app', o: { headBranch: 'feature' }, write: false },
        { key: 'samepr', repo: 'acme/app', o: { event: 'pull_request', headBranch: 'feature' }, write: false },
        { key: 'forkpr', repo: 'acme/open', o: { event: 'pull_request', headRepo: 'evil/fork', headBranch: 'main' }, write: false },
        { key: 'release', repo: 'acme/app', o: { headBranch: 'release', headSha: sha('2') }, write: /^refs\/heads\/release$/ },
        { key: 'tag', repo: 'acme/app', o: { headBranch: 'v1.0.0', headSha: sha('3') }, write: /^refs\/tags\/v1\.0\.0$/ },
        { key: 'tagno', repo: 'acme/app', o: { headBranch: 'nightly' }, write: false },
        { key: 'tagother', repo: 'acme/lib', o: { headBranch: 'v1.0.0' }, write: false },
        { key: 'both', repo: 'acme/app', o: { headBranch: 'v2' }, write: false },
        { key: 'tagmain', repo: 'acme/lib', o: { headBranch: 'main' }, write: false },
        { key: 'apifail', repo: 'acme/secret', o: { headBranch: 'main' }, write: false },
        { key: 'reffail', repo: 'acme/vault', o: { headBranch: 'main' }, write: false },
      ];
      const why: Record<string, RegExp> = {
        feature: /push to feature, not to the default branch trunk, a configured branch or an allowed tag/,
        samepr: /the run's event is pull_request, not a push/,
        forkpr: /the run's event is pull_request, not a push/,
        tagno: /push to nightly, not to the default branch trunk/,
        tagother: /push to v1\.0\.0, not to the default branch main/,
        both: /both a branch and a tag are named v2/,
        tagmain: /both a branch and a tag are named main/,
        apifail: /the trust check failed: GitHub API GET \/repos\/acme\/secret\/actions\/runs\/\d+ answered 502/,
        reffail: /could not tell whether main is a branch or a tag: GitHub forbids reading refs\/tags\/main: Resource not accessible by integration/,
      };
      const jobs = new Map<string, number>();
      for (const c of cases) jobs.set(c.key, (await d.queueJob(c.repo, ['kiln', `kiln-cache-${c.key}`], c.o)).id);
      // A fork pull request on a public repository that does not allow them is refused before any VM.
      const refused = await d.queueJob('acme/app', ['kiln', 'kiln-cache-forkrefused'], { event: 'pull_request', headRepo: 'evil/fork', headBranch: 'main' });

      const keyOf = (c: (typeof cases)[number]) => `github/${c.repo}/${c.key}`;
      await until('every cache job finished and its cache was decided', () => cases.every((c) => outcomes.has(keyOf(c))), 240_000);
      const problems: string[] = [];
      for (const c of cases) {
        const o = outcomes.get(keyOf(c))!;
        const v = caches.inspect(keyOf(c));
        const ghJob = d.jobs.get(jobs.get(c.key)!)!;
        if (c.write) {
          if (!o.cache.committed) problems.push(`${c.key}: not committed (${o.cache.notSaved ?? '?'})`);
          if (!v?.current || !c.write.test(v.current.ref ?? '')) problems.push(`${c.key}: the version's ref is ${v?.current?.ref ?? 'none'}`);
          if (v?.current?.commit !== ghJob.headSha) problems.push(`${c.key}: the version's commit is ${v?.current?.commit ?? 'none'}, not the run's ${ghJob.headSha}`);
          if (v?.current?.id !== o.cache.committed?.id) problems.push(`${c.key}: the current version is not the one the job committed`);
        } else {
          if (o.cache.committed) problems.push(`${c.key}: committed, but may not write`);
          if (v?.current) problems.push(`${c.key}: the store holds a version`);
          if (!o.cache.notSaved?.startsWith('the job may not write this cache: ') || !why[c.key]!.test(o.cache.notSaved)) problems.push(`${c.key}: the reason is "${o.cache.notSaved ?? ''}"`);
        }
        assert.equal(o.cache.hit, false, `${c.key}: a first use is a miss`);
      }
      assert.deepEqual(problems, []);

      // The server keeps its own answer (jobs.cache_answer); a version counts as committed, for a transfer to
      // another host, only on its stored yes, with the answer's ref and commit.
      const parse = <T>(x: T | string | null): T | null => (typeof x === 'string' ? (JSON.parse(x) as T) : x);
      for (const c of cases) {
        const o = outcomes.get(keyOf(c))!;
        const read = () => h!.store.db.selectFrom('jobs').select(['tenant', 'cache_answer', 'cache_outcome']).where('id', '=', o.jobId).executeTakeFirstOrThrow();
        await until(`${c.key}'s result stored`, async () => (await read()).cache_outcome !== null);
        const row = await read();
        const answer = parse(row.cache_answer);
        assert.equal(answer?.write, c.write !== false, `${c.key}: the stored answer ${JSON.stringify(answer)}`);
        assert.equal(answer?.attempt, 1);
        if (c.write) {
          const vouched = await committedCacheVersion(h!.store.db, row.tenant, keyOf(c), o.cache.committed!.id);
          assert.ok(vouched && c.write.test(vouched.ref ?? ''), `${c.key}: vouched for as ${JSON.stringify(vouched)}`);
          assert.equal(vouched.commit, d.jobs.get(jobs.get(c.key)!)!.headSha);
          assert.equal(vouched.jobId, o.jobId);
        } else {
          assert.ok(why[c.key]!.test(answer?.reason ?? ''), `${c.key}: the stored reason "${answer?.reason ?? ''}"`);
        }
      }

      // The trust check failing never fails the job: the VM succeeded and GitHub saw the job succeed.
      for (const k of ['apifail', 'reffail']) {
        const id = outcomes.get(`github/acme/${k === 'apifail' ? 'secret' : 'vault'}/${k}`)!.jobId;
        await until(`${k}'s VM ended`, async () => isTerminal((await runnerVms(h!)).find((x) => x.id === id)?.state ?? 'queued'));
        assert.equal((await runnerVms(h!)).find((x) => x.id === id)?.state, 'succeeded', k);
        await until(`${k} completed on GitHub`, () => d.jobs.get(jobs.get(k)!)?.status === 'completed');
        assert.equal(d.jobs.get(jobs.get(k)!)?.conclusion, 'success', k);
      }
      const fr = await h!.store.db.selectFrom('github_jobs').select(['decision', 'reason_code']).where('job_id', '=', refused.id).executeTakeFirstOrThrow();
      assert.deepEqual(fr, { decision: 'refused', reason_code: 'github.fork_pr' });
      assert.equal(caches.inspect('github/acme/app/forkrefused'), undefined, 'a refused job never touches the cache');
      // The server asked GitHub for the refs it needed, and read the default branch rather than assuming it.
      const calls = d.calls.map((c) => `${c.method} ${c.path} ${c.status}`);
      assert.ok(calls.includes('GET /repos/acme/app 200'));
      assert.ok(calls.includes('GET /repos/acme/app/git/ref/tags/trunk 404'), 'a push to the default branch is checked for a tag of its name');
      assert.ok(calls.includes('GET /repos/acme/app/git/ref/tags/v1.0.0 200') && calls.includes('GET /repos/acme/app/git/ref/heads/v1.0.0 404'));
      assert.ok(!calls.some((c) => c.startsWith('GET /repos/acme/app/git/ref/tags/feature')), 'no refs are read for a push no rule could allow');
      const decided = h!.logs().split('\n').filter((l) => l.includes('"cache write decided"'));
      assert.equal(decided.length, cases.length, 'one decision logged per job');
      await until('settled', () => settled(h!), 60_000);
      assert.deepEqual(await assertInvariants(h!), []);
    });

    void test('the in_progress delivery lost: the server waits to learn which job the runner ran (re-read, later deliveries), then decides', async () => {
      const { caches, outcomes } = await start(kind as StoreKind, {});
      const d = h!.double;
      d.faults.dropActions.add('in_progress');
      await d.queueJob('acme/app', ['kiln', 'kiln-cache-late'], { headBranch: 'main', headSha: sha('7') });
      await until('the job finished and its cache was decided', () => outcomes.has('github/acme/app/late'), 120_000);
      const o = outcomes.get('github/acme/app/late')!;
      assert.ok(o.cache.committed, `saved (${o.cache.notSaved ?? ''})`);
      assert.equal(caches.inspect('github/acme/app/late')?.current?.commit, sha('7'));
      assert.ok(d.deliveries.some((x) => x.action === 'in_progress' && x.statusCode === 502), 'the in_progress delivery was lost');
      d.faults.dropActions.clear();
      await until('settled', () => settled(h!), 60_000);
      assert.deepEqual(await assertInvariants(h!), []);
    });

    void test('a runner made for a trusted push that runs another job: the job it ran decides, not the one it was made for', async () => {
      const { caches, results } = await start(kind as StoreKind, {});
      const d = h!.double;
      d.repos.get('acme/app')!.branches.set('feature', sha('e'));
      d.faults.holdJobs = true;
      d.faults.newestFirst = true;
      const labels = ['kiln', 'kiln-cache-swap'];
      const x = await d.queueJob('acme/app', labels, { headBranch: 'main', headSha: sha('5') });
      await until('the first runner is online', async () => (await h!.store.db.selectFrom('github_runners').select('state').where('state', '=', 'online').execute()).length === 1);
      const first = await h!.store.db.selectFrom('github_runners').select(['name', 'for_job_id', 'kiln_job_id']).executeTakeFirstOrThrow();
      assert.equal(first.for_job_id, x.id);
      assert.notEqual(first.kiln_job_id, null);
      const y = await d.queueJob('acme/app', labels, { headBranch: 'feature', headSha: sha('6') });
      await until('a second runner\'s VM is queued', async () => (await h!.store.db.selectFrom('github_runners').select('kiln_job_id').where('kiln_job_id', 'is not', null).execute()).length === 2);
      const second = await h!.store.db.selectFrom('github_runners').select(['name', 'for_job_id', 'kiln_job_id']).where('name', '<>', first.name).executeTakeFirstOrThrow();
      d.faults.heldRunners.add(second.name);
      d.faults.holdJobs = false;
      await until('the runner made for the push to main took the push to feature', () => d.jobs.get(y.id)?.status === 'in_progress');
      assert.equal(d.jobs.get(y.id)?.runnerName, first.name);
      await until('the first runner\'s VM finished', () => results.some((r) => r.jobId === first.kiln_job_id), 120_000);
      const a = results.find((r) => r.jobId === first.kiln_job_id)!;
      assert.equal(a.cache.committed, undefined, 'made for a push to main, it ran a push to feature: not saved');
      assert.match(a.cache.notSaved ?? '', /push to feature, not to the default branch main/);
      assert.equal(caches.inspect('github/acme/app/swap')?.current, undefined);
      d.faults.heldRunners.clear();
      await until('the second runner\'s VM finished', () => results.some((r) => r.jobId === second.kiln_job_id), 120_000);
      const b = results.find((r) => r.jobId === second.kiln_job_id)!;
      assert.equal(d.jobs.get(x.id)?.runnerName, second.name, 'the runner made for feature ran the push to main');
      assert.ok(b.cache.committed, `made for feature, it ran the push to main: saved (${b.cache.notSaved ?? ''})`);
      const v = caches.inspect('github/acme/app/swap')?.current;
      assert.equal(v?.ref, 'refs/heads/main');
      assert.equal(v?.commit, sha('5'), 'the version records the commit of the job that wrote it');
      assert.equal(results.length, 2);
      await until('settled', () => settled(h!), 60_000);
      assert.deepEqual(await assertInvariants(h!), []);
    });
  });
}
