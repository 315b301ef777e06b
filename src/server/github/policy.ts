/**
 * Pure decisions about a GitHub job: is it kiln's (a kiln label is required: default labels alone never
 * match), what machine it needs (the label grammar of src/core/requirements.ts), which runner labels and
 * demand key serve it, whether its repository is allowed, whether a fork pull request may run, and the
 * forward-only order of workflow_job actions.
 */
import { isKilnError } from '../../core/errors.ts';
import { cacheFromLabels, parseLabels, type Requirements } from '../../core/requirements.ts';

export type LabelDecision =
  | { kind: 'ignore' }
  | { kind: 'refuse'; code: string; reason: string }
  | { kind: 'accept'; requirements: Requirements; runnerLabels: string[]; labelKey: string };

const isKilnLabel = (l: string): boolean => {
  const x = l.trim().toLowerCase();
  return x === 'kiln' || x.startsWith('kiln-');
};

/**
 * Runner labels: GitHub's defaults for the arch plus every job label, so the runner is eligible for exactly
 * the jobs that ask for this label set (GitHub matches job labels ⊆ runner labels, case-insensitively).
 */
export function classifyLabels(labels: readonly string[]): LabelDecision {
  if (!labels.some(isKilnLabel)) return { kind: 'ignore' };
  let requirements: Requirements;
  try {
    requirements = parseLabels(labels);
    cacheFromLabels(labels);
  } catch (e) {
    if (isKilnError(e)) return { kind: 'refuse', code: e.code, reason: e.message };
    throw e;
  }
  const seen = new Map<string, string>();
  for (const l of ['self-hosted', 'linux', requirements.arch === 'arm64' ? 'ARM64' : 'X64', ...labels.map((x) => x.trim())]) {
    if (!seen.has(l.toLowerCase())) seen.set(l.toLowerCase(), l);
  }
  const runnerLabels = [...seen.values()];
  const labelKey = [...seen.keys()].sort().join(',');
  return { kind: 'accept', requirements, runnerLabels, labelKey };
}

/** Every job label is among the runner's labels, case-insensitively (GitHub's matching rule). */
export function runnerMatches(jobLabels: readonly string[], runnerLabels: readonly string[]): boolean {
  const have = new Set(runnerLabels.map((l) => l.toLowerCase()));
  return jobLabels.every((l) => have.has(l.toLowerCase()));
}

/** `owner` or `owner/repo` entries; case-insensitive as GitHub names are. */
export function listed(list: readonly string[], fullName: string): boolean {
  const repo = fullName.toLowerCase();
  const owner = repo.split('/')[0];
  return list.some((a) => {
    const x = a.toLowerCase();
    return x === repo || x === owner || x === `${owner}/*`;
  });
}

export type ForkDecision = { ok: true } | { ok: false; code: 'github.fork_pr'; reason: string };

/**
 * Fork pull requests on public repositories are refused unless the repository opts in: the run's head
 * repository must be the repository itself. Private repositories cannot receive fork runs with secrets of
 * their own, and are the owner's to decide, so they pass.
 */
export function forkDecision(o: { repo: string; isPrivate: boolean; headRepo: string | null | undefined; forkPrAllowed: readonly string[] }): ForkDecision {
  if (o.isPrivate || listed(o.forkPrAllowed, o.repo)) return { ok: true };
  if (o.headRepo && o.headRepo.toLowerCase() === o.repo.toLowerCase()) return { ok: true };
  return {
    ok: false,
    code: 'github.fork_pr',
    reason: `the run comes from ${o.headRepo ?? 'an unknown repository'}, a fork of the public repository ${o.repo}; fork pull requests are refused unless the repository is listed in KILN_GITHUB_FORK_PR_ALLOWED (github.forkPrAllowed in the config file)`,
  };
}

/** What kiln knows of the run a GitHub job belongs to, when deciding whether it may write its cache. */
export interface CacheTrustInput {
  repo: string;
  /** The workflow run's event (push, pull_request, …), from GitHub's API. */
  event: string | null;
  /** The run's head repository: a fork's name for a fork pull request. */
  headRepo: string | null;
  headBranch: string | null;
  /** The repository's default branch, from the webhook. */
  defaultBranch: string | null;
  /** kiln's admission decision for the job. */
  decision: string;
  /** Branches besides the default one whose pushes may write caches (github.cacheWriteBranches, `repo:branch` or `branch`). */
  extraBranches: readonly string[];
}

/**
 * The cache write rule for GitHub jobs (docs/caches.md): only a push to the repository's default branch
 * (or a branch configured for it), made in the repository itself, by a job kiln accepted. Never a pull
 * request (from a fork or not), never an untrusted or refused job. Tags are not recognised yet (GitHub's
 * run object does not say whether head_branch names a tag): configure them as branches to allow them. Pure.
 */
export function cacheWriteDecision(i: CacheTrustInput): { write: true } | { write: false; reason: string } {
  if (i.decision !== 'accepted') return { write: false, reason: `kiln did not accept the job (${i.decision})` };
  if (i.event !== 'push') return { write: false, reason: `the run's event is ${i.event ?? 'unknown'}, not a push` };
  if (!i.headRepo || i.headRepo.toLowerCase() !== i.repo.toLowerCase()) return { write: false, reason: `the run comes from ${i.headRepo ?? 'an unknown repository'}, not ${i.repo}` };
  const b = i.headBranch;
  if (!b) return { write: false, reason: 'the run names no branch' };
  const repo = i.repo.toLowerCase();
  const extra = i.extraBranches.some((x) => x === b || x.toLowerCase() === `${repo}:${b.toLowerCase()}`);
  if (b !== i.defaultBranch && !extra) return { write: false, reason: `a push to ${b}, not to the default branch ${i.defaultBranch ?? '(unknown)'}` };
  return { write: true };
}

export { GH_JOB_STATES, advances, ghStateOfAction, type GhJobState } from '../../core/github-job-state.ts';

/** Delay before provisioning attempt n+1 after n failures: exponential, capped. */
export function backoffMs(failures: number, baseMs: number, maxMs: number): number {
  return Math.min(maxMs, baseMs * 2 ** Math.max(0, failures - 1));
}
