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
  /** The run's head_branch: for a push, the pushed branch's or tag's short name (GitHub does not say which). */
  headBranch: string | null;
  /** The repository's default branch, from GitHub's API. */
  defaultBranch: string | null;
  /** kiln's admission decision for the job. */
  decision: string;
  /** Branches besides the default one whose pushes may write caches (github.cacheWriteBranches, `repo:branch` or `branch`). */
  extraBranches: readonly string[];
  /** Tags whose pushes may write caches (github.cacheWriteTags, `repo:pattern` or `pattern`, `*` any characters). */
  tagPatterns: readonly string[];
}

/**
 * Whether a branch and a tag named like the run's head_branch exist now (GitHub's Git refs API): true, false,
 * or null when kiln could not read it (then `error` says why).
 */
export interface RefKinds {
  branch: boolean | null;
  tag: boolean | null;
  error?: string;
}

type No = { write: false; reason: string };

/** Does `name` match a tag pattern: `*` is any run of characters (none included), everything else itself. */
export function tagMatches(pattern: string, name: string): boolean {
  const re = new RegExp(`^${pattern.split('*').map((p) => p.replace(/[.+?^${}()|[\]\\]/g, '\\$&')).join('.*')}$`);
  return re.test(name);
}

/** An entry of cacheWriteBranches or cacheWriteTags applies to `repo`: `owner/repo:NAME` for that repository, `NAME` for all. */
function entriesFor(entries: readonly string[], repo: string): string[] {
  const r = repo.toLowerCase();
  return entries.flatMap((e) => {
    const i = e.indexOf(':');
    if (i < 0) return [e];
    return e.slice(0, i).toLowerCase() === r ? [e.slice(i + 1)] : [];
  });
}

/**
 * The first half of the GitHub cache write rule (docs/caches.md), from the run alone: a push made in the
 * repository itself, by a job kiln accepted, whose head_branch names the default branch, a configured branch or
 * an allowed tag. Never a pull request (from a fork or not), never an untrusted or refused job. What it cannot
 * say is whether head_branch names a branch or a tag (GitHub's run object does not tell): `cacheWriteDecision`
 * settles that from the repository's refs. Pure.
 */
export function cacheWriteCandidate(i: CacheTrustInput): No | { write: 'if-ref'; name: string; branchAllowed: boolean; tagAllowed: boolean } {
  if (i.decision !== 'accepted') return { write: false, reason: `kiln did not accept the job (${i.decision})` };
  if (i.event !== 'push') return { write: false, reason: `the run's event is ${i.event ?? 'unknown'}, not a push` };
  if (!i.headRepo || i.headRepo.toLowerCase() !== i.repo.toLowerCase()) return { write: false, reason: `the run comes from ${i.headRepo ?? 'an unknown repository'}, not ${i.repo}` };
  const b = i.headBranch;
  if (!b) return { write: false, reason: 'the run names no branch or tag' };
  const branchAllowed = b === i.defaultBranch || entriesFor(i.extraBranches, i.repo).includes(b);
  const tagAllowed = entriesFor(i.tagPatterns, i.repo).some((p) => tagMatches(p, b));
  if (!branchAllowed && !tagAllowed) {
    return { write: false, reason: `a push to ${b}, not to the default branch ${i.defaultBranch ?? '(unknown)'}${i.extraBranches.length > 0 ? ', a configured branch' : ''}${i.tagPatterns.length > 0 ? ' or an allowed tag' : ''}` };
  }
  return { write: 'if-ref', name: b, branchAllowed, tagAllowed };
}

/**
 * The cache write rule for GitHub jobs (docs/caches.md): `cacheWriteCandidate`, then the kind of ref pushed,
 * told from the repository's refs: a branch named like head_branch (the default branch always exists) or a tag.
 * A branch and a tag of the same name cannot be told apart from the run, so that is a no; so is a ref kiln
 * could not read. The answer names the full ref written (`refs/heads/…` or `refs/tags/…`). Pure.
 */
export function cacheWriteDecision(i: CacheTrustInput, refs: RefKinds): No | { write: true; ref: string } {
  const c = cacheWriteCandidate(i);
  if (c.write === false) return c;
  const n = c.name;
  if (refs.branch === null || refs.tag === null) return { write: false, reason: `kiln could not tell whether ${n} is a branch or a tag${refs.error ? `: ${refs.error}` : ''}` };
  if (refs.branch && refs.tag) return { write: false, reason: `both a branch and a tag are named ${n}, and GitHub's run does not say which was pushed` };
  if (refs.branch) {
    return c.branchAllowed ? { write: true, ref: `refs/heads/${n}` } : { write: false, reason: `a push to the branch ${n}, not to the default branch ${i.defaultBranch ?? '(unknown)'} or a configured branch` };
  }
  if (refs.tag) {
    return c.tagAllowed ? { write: true, ref: `refs/tags/${n}` } : { write: false, reason: `a push of the tag ${n}, and no tag pattern allows it (KILN_GITHUB_CACHE_WRITE_TAGS, github.cacheWriteTags)` };
  }
  return { write: false, reason: `neither a branch nor a tag named ${n} exists now` };
}

export { GH_JOB_STATES, advances, ghStateOfAction, type GhJobState } from '../../core/github-job-state.ts';

/** Delay before provisioning attempt n+1 after n failures: exponential, capped. */
export function backoffMs(failures: number, baseMs: number, maxMs: number): number {
  return Math.min(maxMs, baseMs * 2 ** Math.max(0, failures - 1));
}
