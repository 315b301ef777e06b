import { test } from 'node:test';
import assert from 'node:assert/strict';
import { advances, backoffMs, classifyLabels, forkDecision, listed, runnerMatches } from './policy.ts';

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
