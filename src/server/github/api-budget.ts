/**
 * A global budget for GitHub API calls, wrapped around the `GitHubApi` port so that no fault can turn into a
 * request storm: at most `perMinute` calls in any minute, and none at all while GitHub has asked kiln to wait
 * (a `github.rate_limited` answer carries how long: retry-after, x-ratelimit-reset, or a minute for a
 * secondary limit). A call held back fails at once with `github.throttled` (no request is made); the pass
 * step that made it is retried on a later pass, and a throttled registration does not count against a job.
 */
import type { Logger } from 'pino';
import { KilnError, isKilnError } from '../../core/errors.ts';
import type { GitHubApi } from './api.ts';
import type { GitHubEventBus } from './events.ts';
import type { GitHubMetrics } from './metrics.ts';

export interface ApiBudgetOptions {
  perMinute: number;
  now(): number;
  log: Logger;
  metrics: Pick<GitHubMetrics, 'apiCalls'>;
  events: GitHubEventBus;
}

export function withApiBudget(api: GitHubApi, o: ApiBudgetOptions): GitHubApi {
  const recent: number[] = [];
  let holdUntil = 0;
  let holdReason = '';

  const hold = (until: number, reason: string) => {
    if (until <= holdUntil) return;
    holdUntil = until;
    holdReason = reason;
    o.log.warn({ untilMs: until, reason }, 'GitHub API calls held');
    o.events.emit('api.throttled', { untilMs: until, reason });
  };

  async function guard<T>(f: () => Promise<T>): Promise<T> {
    const t = o.now();
    while (recent.length > 0 && recent[0]! <= t - 60_000) recent.shift();
    if (t >= holdUntil && recent.length >= o.perMinute) {
      hold(recent[0]! + 60_000, `kiln's budget of ${o.perMinute} GitHub API calls a minute is spent`);
    }
    if (t < holdUntil) {
      o.metrics.apiCalls.inc({ result: 'throttled' });
      throw new KilnError('github.throttled', `GitHub API calls are held for ${Math.ceil((holdUntil - t) / 1000)} s: ${holdReason}`, {
        kind: 'unavailable',
        details: { untilMs: holdUntil },
        hint: 'kiln resumes by itself; raise KILN_GITHUB_API_CALLS_PER_MINUTE if kiln\'s own budget is too small',
      });
    }
    recent.push(t);
    try {
      const r = await f();
      o.metrics.apiCalls.inc({ result: 'ok' });
      return r;
    } catch (e) {
      if (isKilnError(e, 'github.rate_limited')) {
        o.metrics.apiCalls.inc({ result: 'rate_limited' });
        const wait = typeof e.details?.retryAfterMs === 'number' ? e.details.retryAfterMs : 60_000;
        hold(o.now() + wait, `GitHub rate limit (${e.message})`);
      } else {
        o.metrics.apiCalls.inc({ result: 'error' });
      }
      throw e;
    }
  }

  return {
    getJob: (...a) => guard(() => api.getJob(...a)),
    getRun: (...a) => guard(() => api.getRun(...a)),
    getDefaultBranch: (...a) => guard(() => api.getDefaultBranch(...a)),
    refExists: (...a) => guard(() => api.refExists(...a)),
    generateJitConfig: (...a) => guard(() => api.generateJitConfig(...a)),
    listRunners: (...a) => guard(() => api.listRunners(...a)),
    getRunner: (...a) => guard(() => api.getRunner(...a)),
    deleteRunner: (...a) => guard(() => api.deleteRunner(...a)),
    listFailedDeliveries: (...a) => guard(() => api.listFailedDeliveries(...a)),
    redeliver: (...a) => guard(() => api.redeliver(...a)),
  };
}
