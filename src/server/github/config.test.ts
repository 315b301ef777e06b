import { test } from 'node:test';
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { parseGitHubConfig } from './config.ts';
import { forkDecision } from './policy.ts';

const key = generateKeyPairSync('rsa', { modulusLength: 1024 }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
const base = { KILN_GITHUB_APP_ID: '7', KILN_GITHUB_PRIVATE_KEY: key, KILN_GITHUB_WEBHOOK_SECRET: 'secret-0123456789abcdef' };

void test('config: the runner command by environment may be a JSON array, so an argument can hold a comma', () => {
  assert.deepEqual(parseGitHubConfig({ ...base, KILN_GITHUB_RUNNER_COMMAND: '["/opt/run","--labels=a,b"]' })?.runnerCommand, ['/opt/run', '--labels=a,b']);
  assert.deepEqual(parseGitHubConfig({ ...base, KILN_GITHUB_RUNNER_COMMAND: '/opt/run,--once' })?.runnerCommand, ['/opt/run', '--once']);
  assert.throws(() => parseGitHubConfig({ ...base, KILN_GITHUB_RUNNER_COMMAND: '["/opt/run", 3]' }), (e: Error & { code?: string }) => e.code === 'config.invalid' && /JSON array of strings/.test(e.message));
});

void test('config: the redelivery interval follows the reconcile interval unless set; the API budget is settable', () => {
  const c = parseGitHubConfig({ ...base, KILN_GITHUB_RECONCILE_EVERY: '5s' })!;
  assert.equal(c.reconcileMs, 5_000);
  assert.equal(c.redeliverMs, 20_000);
  assert.equal(parseGitHubConfig(base)!.redeliverMs, 60_000);
  assert.equal(parseGitHubConfig({ ...base, KILN_GITHUB_REDELIVER_EVERY: '2m' })!.redeliverMs, 120_000);
  assert.equal(parseGitHubConfig(base)!.apiCallsPerMinute, 300);
  assert.equal(parseGitHubConfig({ ...base, KILN_GITHUB_API_CALLS_PER_MINUTE: '50' })!.apiCallsPerMinute, 50);
  assert.throws(() => parseGitHubConfig({ ...base, KILN_GITHUB_API_CALLS_PER_MINUTE: '0' }), /calls per minute/);
});

void test('config: spare runners per label set default to 0, are settable by environment and file, and must be whole numbers', () => {
  assert.equal(parseGitHubConfig(base)!.spareRunners, 0);
  assert.equal(parseGitHubConfig({ ...base, KILN_GITHUB_SPARE_RUNNERS: '2' })!.spareRunners, 2);
  assert.equal(parseGitHubConfig(base, { spareRunners: 3 })!.spareRunners, 3);
  assert.throws(() => parseGitHubConfig({ ...base, KILN_GITHUB_SPARE_RUNNERS: '-1' }), /spare runners/);
  assert.throws(() => parseGitHubConfig({ ...base, KILN_GITHUB_SPARE_RUNNERS: '1.5' }), /spare runners/);
});

void test('config: cache write branches and tags by environment (over the file) or file; bad entries are reported together', () => {
  assert.deepEqual(parseGitHubConfig(base)!.cacheWriteTags, []);
  const c = parseGitHubConfig({ ...base, KILN_GITHUB_CACHE_WRITE_TAGS: 'v*, acme/app:*,release/2024-*', KILN_GITHUB_CACHE_WRITE_BRANCHES: 'acme/app:release' }, { cacheWriteTags: ['ignored'] })!;
  assert.deepEqual(c.cacheWriteTags, ['v*', 'acme/app:*', 'release/2024-*']);
  assert.deepEqual(c.cacheWriteBranches, ['acme/app:release']);
  assert.deepEqual(parseGitHubConfig(base, { cacheWriteTags: ['acme/lib:v1.*'] })!.cacheWriteTags, ['acme/lib:v1.*']);
  assert.throws(
    () => parseGitHubConfig({ ...base, KILN_GITHUB_CACHE_WRITE_TAGS: 'v 1,acme:v*', KILN_GITHUB_CACHE_WRITE_BRANCHES: 'a b' }),
    (e: Error) => /cache write tag "v 1"/.test(e.message) && /cache write tag "acme:v\*"/.test(e.message) && /cache write branch "a b"/.test(e.message),
  );
});

void test('the fork refusal names the environment variable that allows it', () => {
  const f = forkDecision({ repo: 'acme/app', isPrivate: false, headRepo: 'evil/app', forkPrAllowed: [] });
  assert.ok(!f.ok && /KILN_GITHUB_FORK_PR_ALLOWED/.test(f.reason));
});
