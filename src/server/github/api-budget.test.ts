import { test } from 'node:test';
import assert from 'node:assert/strict';
import { pino } from 'pino';
import { Registry, Counter } from 'prom-client';
import { KilnError, isKilnError } from '../../core/errors.ts';
import { rateLimitWait, type GitHubApi } from './api.ts';
import { withApiBudget } from './api-budget.ts';
import { GitHubEventBus } from './events.ts';

const headers = (h: Record<string, string>) => ({ get: (n: string) => h[n] ?? null });

void test("rateLimitWait follows GitHub's rules: retry-after, then x-ratelimit-reset, then a minute for a bare 429", () => {
  assert.equal(rateLimitWait(403, headers({ 'retry-after': '30' }), 0), 30_000);
  assert.equal(rateLimitWait(429, headers({ 'x-ratelimit-remaining': '0', 'x-ratelimit-reset': '100' }), 40_000), 60_000);
  assert.equal(rateLimitWait(429, headers({}), 0), 60_000);
  assert.equal(rateLimitWait(403, headers({}), 0), undefined, 'a 403 without limit headers is a permission answer');
  assert.equal(rateLimitWait(200, headers({ 'retry-after': '5' }), 0), undefined);
});

/** A GitHubApi whose every call is counted; `limited` makes the next call answer a rate limit. */
function countingApi(): { api: GitHubApi; calls: () => number; limitNext(ms: number): void } {
  let n = 0;
  let limit: number | undefined;
  const call = async <T>(v: T): Promise<T> => {
    n++;
    if (limit !== undefined) {
      const ms = limit;
      limit = undefined;
      throw new KilnError('github.rate_limited', 'rate limited', { kind: 'unavailable', details: { retryAfterMs: ms } });
    }
    return v;
  };
  return {
    calls: () => n,
    limitNext: (ms) => void (limit = ms),
    api: {
      getJob: () => call(null),
      getRun: () => call(null),
      getDefaultBranch: () => call(null),
      refExists: () => call(false),
      generateJitConfig: () => call({ runnerId: 1, encodedJitConfig: 'x' }),
      listRunners: () => call([]),
      getRunner: () => call(null),
      deleteRunner: () => call('deleted' as const),
      listFailedDeliveries: () => call([]),
      redeliver: () => call(undefined),
    },
  };
}

function budget(perMinute: number) {
  let t = 1_000_000;
  const c = countingApi();
  const events = new GitHubEventBus();
  const held: number[] = [];
  events.on('api.throttled', (e) => held.push(e.untilMs));
  const apiCalls = new Counter({ name: 'x_calls', help: 'x', labelNames: ['result'], registers: [new Registry()] });
  const api = withApiBudget(c.api, { perMinute, now: () => t, log: pino({ level: 'silent' }), metrics: { apiCalls }, events });
  return { api, c, held, tick: (ms: number) => void (t += ms), now: () => t };
}

const inst = { id: 1, owner: 'o', repo: 'r' };
const throttled = (e: unknown) => isKilnError(e, 'github.throttled');

void test('API budget: no more than perMinute calls in any minute; the rest fail at once without a request', async () => {
  const b = budget(5);
  for (let i = 0; i < 5; i++) await b.api.getJob(inst, i);
  for (let i = 0; i < 20; i++) await assert.rejects(b.api.getJob(inst, i), throttled);
  assert.equal(b.c.calls(), 5);
  assert.equal(b.held.length, 1, 'announced once');
  b.tick(60_000);
  await b.api.getJob(inst, 1);
  assert.equal(b.c.calls(), 6);
});

void test("API budget: a rate-limit answer holds every call until GitHub's time, then calls resume", async () => {
  const b = budget(1000);
  b.c.limitNext(30_000);
  await assert.rejects(b.api.generateJitConfig(inst, { level: 'repo', owner: 'o', repo: 'r' }, { name: 'n', labels: [], runnerGroupId: 1 }), (e) => isKilnError(e, 'github.rate_limited'));
  assert.deepEqual(b.held, [b.now() + 30_000]);
  b.tick(29_000);
  await assert.rejects(b.api.listRunners(inst, { level: 'repo', owner: 'o', repo: 'r' }), throttled);
  assert.equal(b.c.calls(), 1, 'no request while held');
  b.tick(1_000);
  assert.deepEqual(await b.api.listRunners(inst, { level: 'repo', owner: 'o', repo: 'r' }), []);
  assert.equal(b.c.calls(), 2);
});
