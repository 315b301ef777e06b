/**
 * What an agent reports about its jobs: phases (booting, running), start requests (the start lease: a
 * command runs only once its running state is stored), cache questions (may a finished job's cache be
 * committed: cache.ask, docs/caches.md), and results, applied only once every output chunk
 * the agent sent for that attempt is stored.
 */
import type { AgentMessageOf, JobResultMsg } from '../../core/agent-protocol.ts';
import { storedLogSeq } from '../../store/logs.ts';
import type { Connection } from './agent-connection.ts';
import type { GatewayDeps } from './agent-gateway.ts';
import type { HostLink } from './host-registry.ts';

export const applyPhase = (deps: GatewayDeps, l: HostLink, jobId: number, attempt: number, phase: 'booting' | 'running') => deps.jobs.applyPhase(l.hostId, jobId, attempt, phase);

export async function phase(deps: GatewayDeps, c: Connection, msg: AgentMessageOf<'job.phase'>): Promise<void> {
  if (!c.link || c.link.active.get(msg.jobId)?.attempt !== msg.attempt) return;
  deps.phases.push({ jobId: msg.jobId, attempt: msg.attempt, hostId: c.link.hostId, phase: msg.phase });
}

/** Grants or refuses a start lease once the job's running state is stored (see phase-writer.ts). */
export function start(deps: GatewayDeps, c: Connection, l: HostLink, msg: AgentMessageOf<'job.start'>): void {
  const { jobId, attempt } = msg;
  if (l.active.get(jobId)?.attempt !== attempt) {
    c.send({ type: 'start.refused', jobId, attempt, reason: 'the job is not placed on this host (any more)' });
    return;
  }
  // How the VM came up (warm or cold, and its boot time), as the agent says: kept with the running state.
  const how = { ...(msg.start ? { start: msg.start } : {}), ...(msg.bootMs !== undefined ? { bootMs: msg.bootMs } : {}) };
  deps.phases.start({ jobId, attempt, hostId: l.hostId, phase: 'running', ...how }).then(
    (ok) => c.send(ok ? { type: 'start.ok', jobId, attempt } : { type: 'start.refused', jobId, attempt, reason: 'the job is no longer placed on this host' }),
    (e: unknown) => {
      // Unknown whether it was stored: the agent asks again after it reconnects (a stored start is granted again).
      c.log().error({ err: e, jobId }, 'could not record a job start');
      if (!c.closed) c.close(1011, 'could not record a job start');
    },
  );
}

export async function done(deps: GatewayDeps, c: Connection, r: JobResultMsg): Promise<void> {
  if (!c.link) return;
  if (!(await outputComplete(deps, c.link, r))) {
    c.log().warn({ jobId: r.jobId, attempt: r.attempt, logChunks: r.logChunks }, 'a result arrived before all of its output was stored; asking the agent to resend');
    c.closed = true;
    c.close(1011, 'job output incomplete; resend');
    return;
  }
  await applyResult(deps, c.link, r);
  deps.logs.forget(r.jobId, r.attempt);
}

/**
 * Whether every output chunk the agent sent for a result's attempt is stored (or settled): a job is never
 * made final with holes in its output. Only for jobs active on this link (others: already settled).
 */
async function outputComplete(deps: GatewayDeps, l: HostLink, r: JobResultMsg): Promise<boolean> {
  if (!r.logChunks || l.active.get(r.jobId)?.attempt !== r.attempt) return true;
  await deps.logs.flush();
  if (deps.logs.settled(r.jobId, r.attempt) >= r.logChunks - 1) return true;
  const stored = await storedLogSeq(deps.ctx.store.db, r.jobId, r.attempt);
  return stored.truncated || stored.seq >= r.logChunks - 1;
}

export async function applyResult(deps: GatewayDeps, l: HostLink, r: JobResultMsg): Promise<void> {
  // Everything the agent sent before the result is stored before the job is final, so a follower that
  // sees the final state has all the output.
  // The cache outcome first, so a reader that sees the job final sees it too (and the relay finds a committed
  // version's checksum as soon as its host reports holding it).
  if (r.cache && l.active.get(r.jobId)?.attempt === r.attempt) await deps.jobs.storeCacheOutcome(r.jobId, r.attempt, r.cache);
  const res = await deps.results.apply(l.hostId, r);
  const held = l.active.get(r.jobId);
  if (held && held.attempt === r.attempt) {
    l.active.delete(r.jobId);
    l.stopping.delete(r.jobId);
  }
  l.send({ type: 'done.ack', jobId: r.jobId, attempt: r.attempt });
  if (res) deps.jobs.finished(l.hostId, res);
  if (res && r.cache) countCache(deps, r.cache);
  // A VM that could not be launched, did not boot or crashed here makes the scheduler prefer other hosts.
  if (res?.job.state === 'failed' && (r.outcome === 'launch_failed' || r.outcome === 'boot_failed' || r.outcome === 'crashed')) {
    deps.ctx.events.emit('host.launch_failed', { hostId: l.hostId, jobId: r.jobId, code: r.code ?? `vm.${r.outcome}` });
  }
  deps.scheduler.capacityFreed();
}

/** A job's cache, once per applied result (a resent result changes nothing and is not counted). */
function countCache(deps: GatewayDeps, c: NonNullable<JobResultMsg['cache']>): void {
  const m = deps.ctx.metrics;
  (c.hit ? m.cacheHits : m.cacheMisses).inc();
  if (c.committed) {
    m.cacheCommits.inc();
    m.cacheCommittedBytes.inc(c.committed.bytes);
    m.cacheCommitSeconds.observe(c.committed.seconds);
  }
  if (c.evicted) m.cacheEvictions.inc(c.evicted);
}

/** Answers cache.ask off the message queue (it may call GitHub's API); the default is no. */
export function cacheAsk(deps: GatewayDeps, c: Connection, msg: AgentMessageOf<'cache.ask'>): void {
  if (!c.link) return;
  const ask = c.link.active.get(msg.jobId)?.attempt === msg.attempt ? deps.cacheTrust : undefined;
  void (async () => {
    let a: { write: boolean; reason?: string; ref?: string; commit?: string };
    try {
      a = ask ? await ask(msg.jobId) : { write: false, reason: 'this server decides no cache writes for such jobs' };
    } catch (e) {
      a = { write: false, reason: `the trust check failed: ${(e as Error).message}`.slice(0, 500) };
    }
    // Stored before the agent hears it: the cache relay trusts what this job commits only on a stored yes.
    // A yes that cannot be stored (or names an attempt no longer current) is sent as a no.
    if (ask) {
      try {
        // A stored yes for this attempt holds: a repeated ask gets it back.
        const held = await deps.jobs.storeCacheAnswer(msg.jobId, msg.attempt, a);
        if (!held) a = a.write ? { write: false, reason: `job ${msg.jobId} attempt ${msg.attempt} is no longer current` } : a;
        else a = { write: held.write, ...(held.reason ? { reason: held.reason } : {}), ...(held.ref ? { ref: held.ref } : {}), ...(held.commit ? { commit: held.commit } : {}) };
      } catch (e) {
        c.log().warn({ jobId: msg.jobId, err: (e as Error).message }, 'could not store the answer to cache.ask; answering no');
        a = { write: false, reason: 'the server could not record its answer' };
      }
    }
    if (!c.closed) c.send({ type: 'cache.answer', jobId: msg.jobId, attempt: msg.attempt, write: a.write, ...(a.reason ? { reason: a.reason.slice(0, 500) } : {}), ...(a.ref ? { ref: a.ref } : {}), ...(a.commit ? { commit: a.commit } : {}) });
  })();
}
