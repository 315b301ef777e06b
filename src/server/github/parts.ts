/**
 * What the GitHub stages share: one object built by github.ts and passed to each stage explicitly (no
 * module state). Also the small mappings between stored records and the API's installation and scope.
 */
import type { Logger } from 'pino';
import { toKilnError } from '../../core/errors.ts';
import type { GhJob } from '../../store/github-jobs.ts';
import type { GhRunner } from '../../store/github-runners.ts';
import type { Db } from '../../store/store.ts';
import type { ServerContext } from '../context.ts';
import type { GitHubApi, Installation, Scope } from './api.ts';
import type { GitHubConfig } from './config.ts';
import type { GitHubEventBus } from './events.ts';
import type { GitHubMetrics } from './metrics.ts';

export interface GitHubParts {
  ctx: ServerContext;
  db: Db;
  config: GitHubConfig;
  api: GitHubApi;
  log: Logger;
  events: GitHubEventBus;
  metrics: GitHubMetrics;
  now(): number;
  /** Runs one step of a pass; a failure is logged and left for a later pass. */
  step(what: string, f: () => Promise<void>): Promise<void>;
}

export function makeStep(log: Logger): GitHubParts['step'] {
  return async (what, f) => {
    try {
      await f();
    } catch (e) {
      const err = toKilnError(e);
      log.warn({ err: { code: err.code, message: err.message } }, `${what} failed; a later pass retries`);
    }
  };
}

/** The installation a job came through, with its repository to re-resolve a stale id. */
export const jobInstallation = (j: Pick<GhJob, 'installationId' | 'repo'>): Installation => {
  const [owner = '', repo = ''] = j.repo.split('/');
  return { id: j.installationId ?? 0, owner, repo };
};

export const runnerScope = (r: Pick<GhRunner, 'scope'>): Scope => ({ level: r.scope.level, owner: r.scope.owner, repo: r.scope.repo });

export const runnerInstallation = (r: Pick<GhRunner, 'scope' | 'installationId'>): Installation => ({
  id: r.installationId,
  owner: r.scope.owner,
  repo: r.scope.repo ?? '',
});
