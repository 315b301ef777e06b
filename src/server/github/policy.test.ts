import { test } from 'node:test';
import assert from 'node:assert/strict';
import { advances, backoffMs, cacheWriteDecision, classifyLabels, forkDecision, listed, runnerMatches, type CacheTrustInput } from './policy.ts';
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
  const base: CacheTrustInput = { repo: 'acme/widget', event: 'push', headRepo: 'acme/widget', headBranch: 'main', defaultBranch: 'main', decision: 'accepted', extraBranches: [] };
  assert.deepEqual(cacheWriteDecision(base), { write: true });
  const no = (over: Partial<CacheTrustInput>, why: RegExp) => {
    const d = cacheWriteDecision({ ...base, ...over });
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
  assert.deepEqual(cacheWriteDecision({ ...base, headBranch: 'release', extraBranches: ['acme/widget:release'] }), { write: true });
  assert.deepEqual(cacheWriteDecision({ ...base, headBranch: 'release', extraBranches: ['release'] }), { write: true });
  no({ headBranch: 'release', extraBranches: ['other/repo:release'] }, /push to release/);
});
