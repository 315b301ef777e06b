/**
 * A job's use of a warm cache, shared by `kiln run` and the agent: the lease taken before the VM starts, and
 * after it, the write-back decision (commitDecision, pure) and the commit.
 */
import type { CacheFetchMsg } from '../core/agent-protocol.ts';
import { toKilnError } from '../core/errors.ts';
import type { CacheLease, CacheStore, CacheVersion, CacheWriter } from './cache-store.ts';
import type { VmResult } from './driver.ts';

export interface JobCacheRequest {
  key: string;
  /**
   * May this job's overlay become the next version (the job is trusted to write this cache)? 'ask': only if
   * `finishJobCache`'s `ask` answers yes after the job (GitHub runners: which job a runner ran is known only then).
   */
  write: boolean | 'ask';
  /** The file system's size when the cache is made by this job (its first use). */
  sizeBytes?: number;
}

export interface JobCacheOutcome {
  key: string;
  hit: boolean;
  /** The version the job read. */
  version?: string;
  /** Set when the job's overlay was committed. */
  committed?: CacheVersion;
  /** Why a writing job's overlay was not committed. */
  notSaved?: string;
  /** Keys of the caches evicted after the job (over the host budget). */
  evicted?: string[];
  /** A fetch of a newer version from a peer host before the job started (fleet agents only), and how it ended. */
  fetch?: CacheFetchMsg;
}

/**
 * Whether a job's cache overlay may be committed: only a job allowed to write, that exited 0, whose guest
 * synced and unmounted /cache before it reported the exit.
 */
export function commitDecision(write: boolean | 'ask', r: VmResult): { commit: true } | { commit: false; why: string } {
  if (!write) return { commit: false, why: 'the job may only read this cache' };
  if (r.outcome !== 'exited') return { commit: false, why: `the job did not finish (${r.outcome.replace('_', ' ')})` };
  if (r.exitCode !== 0) return { commit: false, why: `the job failed (exit ${r.exitCode})` };
  if (!r.cacheClean) return { commit: false, why: 'the guest did not unmount /cache cleanly' };
  return { commit: true };
}

export async function openJobCache(store: CacheStore, req: JobCacheRequest, jobId: string): Promise<CacheLease> {
  return store.open(req.key, { jobId, ...(req.sizeBytes !== undefined ? { sizeBytes: req.sizeBytes } : {}) });
}

/** Commits (when the decision allows) and releases the lease; collects old versions and keeps the budget. Never throws. */
export async function finishJobCache(
  store: CacheStore,
  lease: CacheLease,
  req: JobCacheRequest,
  r: VmResult,
  writer: CacheWriter,
  ask?: () => Promise<{ write: boolean; reason?: string; ref?: string; commit?: string }>,
): Promise<JobCacheOutcome> {
  const out: JobCacheOutcome = { key: req.key, hit: lease.hit, ...(lease.version ? { version: lease.version } : {}) };
  try {
    const d = commitDecision(req.write, r);
    if (d.commit && req.write === 'ask') {
      const a = ask ? await ask() : { write: false, reason: 'nobody to ask whether the job may write its cache' };
      if (a.write) out.committed = await lease.commit({ ...writer, ...(a.ref ? { ref: a.ref } : {}), ...(a.commit ? { commit: a.commit } : {}) });
      else out.notSaved = `the job may not write this cache: ${a.reason ?? 'not trusted'}`;
    } else if (d.commit) out.committed = await lease.commit(writer);
    else if (req.write) out.notSaved = d.why;
  } catch (e) {
    out.notSaved = `the commit failed: ${toKilnError(e).message}`;
  } finally {
    lease.release();
    try {
      const evicted = store.collect();
      if (evicted.length > 0) out.evicted = evicted;
    } catch {
      /* collection is retried at the next job */
    }
  }
  return out;
}
