import { test } from 'node:test';
import assert from 'node:assert/strict';
import { advances, backoffMs, cacheWriteDecision, classifyLabels, forkDecision, listed, runnerMatches, tagMatches, type CacheTrustInput, type RefKinds } from './policy.ts';
import { runnerCache } from './provisioner.ts';

test('labels: no kiln label is ignored; default labels alone never match', () => {
  assert.equal(classifyLabels(['ubuntu-latest']).kind, 'ignore');
  assert.equal(classifyLabels(['self-hosted', 'linux', 'x64']).kind, 'ignore');
  assert.equal(classifyLabels([]).kind, 'ignore');
});

test('labels: kiln labels give requirements, runner labels and a demand key', () => {
  const a = classifyLabels(['kiln-arm64-8cpu-32gb']);
  assert.equal(a.kind, 'accept');
  if (a.kind !== 'accept') return;
  assert.equal(a.requirements.arch, 'arm64');
  assert.equal(a.requirements.cpus, 8);
  assert.deepEqual(a.runnerLabels, ['self-hosted', 'linux', 'ARM64', 'kiln-arm64-8cpu-32gb']);
  const b = classifyLabels(['self-hosted', 'KILN-arm64-8cpu-32gb']);
  assert.equal(b.kind === 'accept' && b.labelKey, a.labelKey, 'the same machine through other spellings shares a demand key');
  assert.ok(runnerMatches(['self-hosted', 'Kiln-ARM64-8cpu-32gb'], a.runnerLabels));
  assert.ok(!runnerMatches(['kiln-arm64', 'gpu'], a.runnerLabels));
  const x = classifyLabels(['kiln']);
  assert.ok(x.kind === 'accept' && x.requirements.arch === 'amd64' && x.runnerLabels.includes('X64'));
});

test('labels: an unknown kiln label is refused with the reason, never dropped', () => {
  const r = classifyLabels(['kiln-huge']);
  assert.equal(r.kind, 'refuse');
  assert.ok(r.kind === 'refuse' && r.code === 'label.unknown' && /kiln-huge/.test(r.reason));
  assert.equal(classifyLabels(['kiln', 'kiln-arm64']).kind, 'refuse');
});

test('allow-list by owner or repository, case-insensitive', () => {
  assert.ok(listed(['Octo-Org'], 'octo-org/app'));
  assert.ok(listed(['octo-org/app'], 'Octo-Org/App'));
  assert.ok(!listed(['octo-org/app'], 'octo-org/other'));
  assert.ok(!listed([], 'octo-org/app'));
});

test('fork pull requests on public repositories are refused unless opted in', () => {
  assert.deepEqual(forkDecision({ repo: 'o/r', isPrivate: false, headRepo: 'o/r', forkPrAllowed: [] }), { ok: true });
  assert.equal(forkDecision({ repo: 'o/r', isPrivate: false, headRepo: 'evil/r', forkPrAllowed: [] }).ok, false);
  assert.equal(forkDecision({ repo: 'o/r', isPrivate: false, headRepo: 'evil/r', forkPrAllowed: ['o/r'] }).ok, true);
  assert.equal(forkDecision({ repo: 'o/r', isPrivate: true, headRepo: 'evil/r', forkPrAllowed: [] }).ok, true);
});

test('job states only move forward; backoff is bounded', () => {
  assert.ok(advances('waiting', 'queued'));
  assert.ok(advances('queued', 'completed'));
  assert.ok(!advances('completed', 'queued'));
  assert.ok(!advances('in_progress', 'queued'));
  assert.ok(!advances('queued', 'queued'));
  assert.deepEqual([1, 2, 3, 10].map((n) => backoffMs(n, 100, 1000)), [100, 200, 400, 1000]);
});

test('cache labels: kiln-cache is the repository\'s cache, kiln-cache-KEY a named one; neither is a machine or host label', () => {
  const a = classifyLabels(['kiln-4cpu-16gb', 'kiln-cache']);
  assert.equal(a.kind, 'accept');
  if (a.kind === 'accept') assert.deepEqual(a.requirements.hostLabels, []);
  assert.equal(classifyLabels(['kiln-cache-deps']).kind, 'accept', 'a cache label alone is a kiln job of the default size');
  assert.equal(classifyLabels(['kiln', 'kiln-cache-a', 'kiln-cache-b']).kind, 'refuse');
  assert.deepEqual(runnerCache('github', { labels: ['kiln', 'kiln-cache'], repo: 'Acme/Widget' }), { cache: { key: 'github/acme/widget', write: 'ask', by: 'github Acme/Widget' } });
  assert.deepEqual(runnerCache('github', { labels: ['kiln', 'kiln-cache-deps'], repo: 'acme/widget' }).cache?.key, 'github/acme/widget/deps');
  assert.deepEqual(runnerCache('github', { labels: ['kiln'], repo: 'acme/widget' }), {});
});

test('cache write rule: only a push to the default branch (or a configured one) in the repository itself, by an accepted job', () => {
  const base: CacheTrustInput = { repo: 'acme/widget', event: 'push', headRepo: 'acme/widget', headBranch: 'main', defaultBranch: 'main', decision: 'accepted', extraBranches: [], tagPatterns: [] };
  const branch: RefKinds = { branch: true, tag: false };
  assert.deepEqual(cacheWriteDecision(base, branch), { write: true, ref: 'refs/heads/main' });
  const no = (over: Partial<CacheTrustInput>, why: RegExp, refs: RefKinds = branch) => {
    const d = cacheWriteDecision({ ...base, ...over }, refs);
    assert.equal(d.write, false, JSON.stringify(over));
    if (!d.write) assert.match(d.reason, why);
  };
  no({ event: 'pull_request', headRepo: 'mallory/widget' }, /event is pull_request/);
  no({ event: 'pull_request' }, /event is pull_request/); // a pull request from a branch of the repository itself: still no
  no({ event: 'pull_request_target' }, /not a push/);
  no({ headRepo: 'mallory/widget' }, /comes from mallory\/widget/); // a push event whose head is a fork (never expected; refused)
  no({ headBranch: 'feature' }, /push to feature, not to the default branch main/);
  no({ defaultBranch: null }, /default branch \(unknown\)/);
  no({ decision: 'refused' }, /did not accept/);
  no({ decision: 'pending' }, /did not accept/);
  no({ event: null }, /unknown/);
  no({ headBranch: null }, /names no branch or tag/);
  assert.deepEqual(cacheWriteDecision({ ...base, headBranch: 'release', extraBranches: ['acme/widget:release'] }, branch), { write: true, ref: 'refs/heads/release' });
  assert.deepEqual(cacheWriteDecision({ ...base, headBranch: 'release', extraBranches: ['release'] }, branch), { write: true, ref: 'refs/heads/release' });
  assert.deepEqual(cacheWriteDecision({ ...base, headBranch: 'release', extraBranches: ['ACME/Widget:release'] }, branch), { write: true, ref: 'refs/heads/release' });
  no({ headBranch: 'release', extraBranches: ['other/repo:release'] }, /push to release/);
  // the kind of ref pushed: a tag named like the default branch is not the default branch
  no({}, /both a branch and a tag are named main/, { branch: true, tag: true });
  no({}, /push of the tag main, and no tag pattern allows it/, { branch: false, tag: true });
  no({}, /could not tell whether main is a branch or a tag: GitHub forbids/, { branch: true, tag: null, error: 'GitHub forbids reading refs/tags/main' });
  no({ headBranch: 'release', extraBranches: ['release'] }, /neither a branch nor a tag named release/, { branch: false, tag: false });
});

test('cache write rule: tags write only where a pattern allows them, never confusable with a branch', () => {
  const base: CacheTrustInput = { repo: 'acme/widget', event: 'push', headRepo: 'acme/widget', headBranch: 'v1.2.0', defaultBranch: 'main', decision: 'accepted', extraBranches: [], tagPatterns: [] };
  const tag: RefKinds = { branch: false, tag: true };
  const d = (over: Partial<CacheTrustInput>, refs: RefKinds = tag) => cacheWriteDecision({ ...base, ...over }, refs);
  assert.match((d({}) as { reason: string }).reason, /push to v1\.2\.0, not to the default branch main$/);
  assert.deepEqual(d({ tagPatterns: ['*'] }), { write: true, ref: 'refs/tags/v1.2.0' });
  assert.deepEqual(d({ tagPatterns: ['v*'] }), { write: true, ref: 'refs/tags/v1.2.0' });
  assert.deepEqual(d({ tagPatterns: ['acme/widget:v1.*'] }), { write: true, ref: 'refs/tags/v1.2.0' });
  assert.equal(d({ tagPatterns: ['other/repo:*'] }).write, false);
  assert.equal(d({ tagPatterns: ['v2*'] }).write, false);
  assert.equal(d({ tagPatterns: ['v1?2?0'] }).write, false, 'only * is special');
  assert.equal(d({ tagPatterns: ['v1.2.0'], headBranch: 'v1x2x0' }).write, false, 'a dot is a dot');
  // a tag pattern never lets a branch of that name write, and a branch rule never lets a tag write
  assert.match((d({ tagPatterns: ['v*'] }, { branch: true, tag: false }) as { reason: string }).reason, /push to the branch v1\.2\.0/);
  assert.match((d({ tagPatterns: ['v*'] }, { branch: true, tag: true }) as { reason: string }).reason, /both a branch and a tag/);
  assert.match((d({ extraBranches: ['v1.2.0'] }) as { reason: string }).reason, /push of the tag v1\.2\.0/);
  assert.ok(tagMatches('release/*', 'release/2024-01') && !tagMatches('release/*', 'xrelease/1') && tagMatches('*', '') && !tagMatches('a', 'ab'));
});
