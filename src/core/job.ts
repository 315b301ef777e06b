/** The job as the control plane and its clients see it (the row type lives in src/store/schema.ts). */
import type { CacheOutcomeMsg, JobCacheMsg, LaunchSpec } from './agent-protocol.ts';
import type { JobState } from './job-state.ts';
import type { Requirements } from './requirements.ts';

export interface JobSpec {
  tenant: string;
  requirements: Requirements;
  /** The labels the job was submitted with, if any (kept for display and for GitHub matching). */
  labels: string[];
  image: string;
  command: string[];
  env: Record<string, string>;
  /** Names of `env` entries that are secrets: never returned by the API, masked in stored logs. */
  secretEnv?: string[];
  cwd?: string;
  timeoutMs: number;
  network: 'none' | 'user';
  priority: number;
  submittedBy?: number;
  /**
   * A warm cache disk at /cache (docs/caches.md). `key` as stored is the host-side key: the tenant, '/', the key
   * asked for. `write`: the job's copy becomes the next version if it succeeds (decided at submission).
   */
  cache?: JobCacheMsg;
  /** The GitHub repository a runner VM serves: its egress allowlist applies (set by the GitHub part only). */
  egressRepo?: string;
}

export interface Job extends JobSpec {
  id: number;
  /** What happened to its cache (hit or miss, committed or why not, fetched from a peer), once it finished. */
  cacheOutcome?: CacheOutcomeMsg;
  state: JobState;
  attempt: number;
  hostId: number | null;
  exitCode: number | null;
  error: { code: string; message: string } | null;
  cancelRequested: boolean;
  logBytes: number;
  logTruncated: boolean;
  createdAt: string;
  placedAt: string | null;
  bootingAt: string | null;
  runningAt: string | null;
  finishedAt: string | null;
}

export interface JobTransition {
  attempt: number;
  state: JobState;
  hostId: number | null;
  detail: string | null;
  at: string;
}

export type LogStream = 'stdout' | 'stderr' | 'kiln';

export interface LogChunk {
  /** Cursor: strictly increasing per job in storage order. */
  id: number;
  attempt: number;
  stream: LogStream;
  data: Buffer;
}

export const DEFAULT_IMAGE = 'default';
export const DEFAULT_TIMEOUT_MS = 60 * 60 * 1000;

/** What an agent needs to start a job's VM (the `launch` message's spec). */
export function launchSpecOf(job: Job): LaunchSpec {
  return {
    arch: job.requirements.arch,
    cpus: job.requirements.cpus,
    memoryBytes: job.requirements.memoryBytes,
    diskBytes: job.requirements.diskBytes,
    image: job.image,
    command: job.command,
    env: job.env,
    ...(job.secretEnv && job.secretEnv.length > 0 ? { secretEnv: job.secretEnv } : {}),
    ...(job.cwd !== undefined ? { cwd: job.cwd } : {}),
    timeoutMs: job.timeoutMs,
    network: job.network,
    ...(job.cache ? { cache: job.cache } : {}),
  };
}
