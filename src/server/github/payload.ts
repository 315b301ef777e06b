/**
 * Reading a `workflow_job` delivery, tolerantly: the 2021 example in @octokit/webhooks-examples lacks keys
 * the current schema requires (run_attempt, workflow_name, head_branch, created_at), and such payloads must
 * not crash the receiver. Pure.
 */
import { KilnError } from '../../core/errors.ts';

export interface WorkflowJobEvent {
  action: string;
  jobId: number;
  runId: number;
  runAttempt: number;
  labels: string[];
  status: string | null;
  runnerName: string | null;
  conclusion: string | null;
  workflow: string | null;
  headBranch: string | null;
  repo: string;
  owner: string;
  ownerType: string;
  isPrivate: boolean;
  installationId: number | null;
  sender: string | null;
  org: string | null;
  createdAt: string | null;
  startedAt: string | null;
  completedAt: string | null;
}

type Obj = Record<string, unknown>;
const obj = (v: unknown): Obj | undefined => (v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Obj) : undefined);
const str = (v: unknown): string | null => (typeof v === 'string' ? v : null);
const int = (v: unknown): number | null => (typeof v === 'number' && Number.isSafeInteger(v) ? v : null);

export function parseWorkflowJob(payload: unknown): WorkflowJobEvent {
  const p = obj(payload);
  const job = obj(p?.workflow_job);
  const repo = obj(p?.repository);
  const owner = obj(repo?.owner);
  const bad = (what: string): never => {
    throw new KilnError('github.bad_payload', `the workflow_job payload has no valid ${what}`);
  };
  const action = str(p?.action) ?? bad('action');
  const jobId = int(job?.id) ?? bad('workflow_job.id');
  const fullName = str(repo?.full_name) ?? bad('repository.full_name');
  const labels = Array.isArray(job?.labels) ? job.labels.filter((l): l is string => typeof l === 'string') : [];
  return {
    action,
    jobId,
    runId: int(job?.run_id) ?? 0,
    runAttempt: int(job?.run_attempt) ?? 1,
    labels,
    status: str(job?.status),
    runnerName: str(job?.runner_name),
    conclusion: str(job?.conclusion),
    workflow: str(job?.workflow_name),
    headBranch: str(job?.head_branch),
    repo: fullName,
    owner: str(owner?.login) ?? fullName.split('/')[0] ?? '',
    ownerType: str(owner?.type) ?? 'User',
    isPrivate: repo?.private === true,
    installationId: int(obj(p?.installation)?.id),
    sender: str(obj(p?.sender)?.login),
    org: str(obj(p?.organization)?.login),
    createdAt: str(job?.created_at),
    startedAt: str(job?.started_at),
    completedAt: str(job?.completed_at),
  };
}
