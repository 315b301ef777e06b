/**
 * `workflow_job` payloads: the real examples from @octokit/webhooks-examples, and schema-valid mutations of
 * them (kiln labels, ids, repository, runner, conclusion) for the cases the examples do not cover.
 */
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);

export type Payload = Record<string, unknown> & { action: string; workflow_job: Record<string, unknown>; repository: Record<string, unknown> };

export function realExamples(): Payload[] {
  const all = require('@octokit/webhooks-examples/api.github.com/index.json') as { name: string; examples: Payload[] }[];
  const w = all.find((e) => e.name === 'workflow_job');
  if (!w) throw new Error('no workflow_job examples');
  return structuredClone(w.examples);
}

export interface PayloadJob {
  id: number;
  runId: number;
  runAttempt: number;
  labels: string[];
  repo: string;
  repoId: number;
  private: boolean;
  ownerType: 'Organization' | 'User';
  installationId: number | null;
  runnerId: number | null;
  runnerName: string | null;
  conclusion: string | null;
  /** The run's head branch (a tag's name for a tag push); `main` when unset. */
  headBranch?: string;
  headSha?: string;
}

/** Base example per action: queued [5], waiting [7], in_progress [3], completed [1]. */
const BASE: Record<string, number> = { queued: 5, waiting: 7, in_progress: 3, completed: 1 };

export function workflowJobPayload(action: 'queued' | 'waiting' | 'in_progress' | 'completed', j: PayloadJob): Payload {
  const p = realExamples()[BASE[action]!]!;
  const [owner = '', name = ''] = j.repo.split('/');
  p.action = action;
  delete p.organization;
  delete p.deployment;
  if (j.installationId !== null) p.installation = { id: j.installationId, node_id: 'MDIzOkludGVncmF0aW9uSW5zdGFsbGF0aW9uMQ==' };
  else delete p.installation;
  const repo = p.repository as Record<string, unknown> & { owner: Record<string, unknown> };
  Object.assign(repo, { id: j.repoId, name, full_name: j.repo, private: j.private });
  Object.assign(repo.owner, { login: owner, type: j.ownerType });
  if (j.ownerType === 'Organization') p.organization = { login: owner, id: 1, node_id: 'O_1', url: '', repos_url: '', events_url: '', hooks_url: '', issues_url: '', members_url: '', public_members_url: '', avatar_url: '', description: null };
  const wj = p.workflow_job;
  const ran = action === 'in_progress' || (action === 'completed' && j.runnerName !== null);
  Object.assign(wj, {
    id: j.id,
    run_id: j.runId,
    run_attempt: j.runAttempt,
    labels: j.labels,
    status: action,
    conclusion: action === 'completed' ? (j.conclusion ?? 'success') : null,
    runner_id: ran ? j.runnerId : null,
    runner_name: ran ? j.runnerName : null,
    runner_group_id: ran ? 1 : null,
    runner_group_name: ran ? 'Default' : null,
    created_at: '2024-01-01T00:00:00Z',
    started_at: '2024-01-01T00:00:00Z',
    completed_at: action === 'completed' ? '2024-01-01T00:01:00Z' : null,
    head_branch: j.headBranch ?? 'main',
    ...(j.headSha ? { head_sha: j.headSha } : {}),
    workflow_name: 'CI',
  });
  if (action === 'completed' && !ran) wj.steps = [];
  return p;
}
