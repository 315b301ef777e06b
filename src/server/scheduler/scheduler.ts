/**
 * The scheduling loop of one replica. Each pass, in one transaction: claim queued jobs that could fit on
 * this replica's hosts (FOR UPDATE SKIP LOCKED, fair order across tenants), read tenant limits under lock,
 * lock this replica's schedulable host rows, run the pure placement, mark the jobs placed. After commit it
 * sends `launch` to the agents. Passes run when something changes (a submission here, capacity freed, a
 * host joined) and on a short poll for work other replicas accepted.
 */
import type { Arch } from '../../core/arch.ts';
import { isTerminal } from '../../core/job-state.ts';
import { anyQueued, claimQueuedJobs, jobStatuses, type ClaimWindow, type PlacedJob } from '../../store/jobs.ts';
import { anyTenantLimits, tenantUsage } from '../../store/tenants.ts';
import { hostStates } from '../../store/hosts.ts';
import { loadEgressPolicies } from '../../store/egress-policies.ts';
import { egressAllowFor, type EgressPolicies } from '../../core/egress-allow.ts';
import type { ServerContext } from '../context.ts';
import type { JobCommands, Placement } from '../jobs/job-commands.ts';
import { makeLoop } from '../loop.ts';
import type { HostPool, PoolHost } from './host-pool.ts';
import { placeJobs, type JobDemand } from './placement.ts';
import { DEFAULT_PENALTY_HALF_LIFE_MS, PENALTY_HORIZON_HALF_LIVES, penaltyLevels } from './host-penalties.ts';
import { recentLaunchFailures } from '../../store/launch-failures.ts';

export interface Scheduler {
  /** Asks for a scheduling pass soon (coalesced). */
  kick(): void;
  /**
   * Capacity was freed (a job ended): asks for a pass only if jobs were still queued after the last one.
   * Work that arrives later kicks on its own (or, from other replicas, is found by the poll).
   */
  capacityFreed(): void;
  /** A tenant limit changed here (other replicas notice within a second). */
  limitsChanged(): void;
  /** Runs one pass now; resolves with the number of jobs placed. */
  pass(): Promise<number>;
  start(): void;
  stop(): Promise<void>;
}

export function makeScheduler(ctx: ServerContext, registry: HostPool, door: JobCommands, o: { now?: () => number; penaltyHalfLifeMs?: number } = {}): Scheduler {
  const now = o.now ?? Date.now;
  const halfLifeMs = o.penaltyHalfLifeMs ?? DEFAULT_PENALTY_HALF_LIFE_MS;
  /** Whether jobs were still queued after the last pass (unknown before the first pass). */
  let backlog = true;
  /** Capacity freed while a pass ran: that pass's claims predate it, so a leftover backlog gets another pass. */
  let freedDuringPass = false;
  let poll: NodeJS.Timeout | undefined;
  let stopPoll: NodeJS.Timeout | undefined;
  let stopPollBusy = false;
  let offSubmitted: (() => void) | undefined;
  let offFailed: (() => void) | undefined;
  const log = ctx.log.child({ part: 'scheduler' });
  // Egress allowlists per tenant and repository, read at most once a second; if a read fails, the last ones
  // read hold (never a launch held back by it; with none read yet a VM gets only the host's own list).
  let egressCache: { at: number; p: EgressPolicies } | undefined;
  const egressPolicies = async (): Promise<EgressPolicies> => {
    if (egressCache && Date.now() - egressCache.at < 1000) return egressCache.p;
    try {
      egressCache = { at: Date.now(), p: await loadEgressPolicies(ctx.store.db) };
    } catch (e) {
      log.warn({ err: e }, 'could not read the egress allowlists; using the last ones read');
    }
    return egressCache?.p ?? { tenants: new Map(), repos: new Map() };
  };
  // Host penalties from the launch failures the store holds (every replica sees the same), read at most once a
  // second, and at once after a failure reported here; if a read fails, the last levels read hold.
  let penaltyCache: { at: number; levels: ReadonlyMap<number, number> } | undefined;
  /** Counts failures reported here: a read that began before one is used once, not cached. */
  let penaltyGen = 0;
  const hostPenalties = async (): Promise<ReadonlyMap<number, number>> => {
    const t = now();
    if (penaltyCache && t - penaltyCache.at < 1000) return penaltyCache.levels;
    const gen = penaltyGen;
    try {
      const failures = await recentLaunchFailures(ctx.store.db, t - PENALTY_HORIZON_HALF_LIVES * halfLifeMs);
      const levels = penaltyLevels(failures, t, halfLifeMs);
      if (gen !== penaltyGen) return levels;
      penaltyCache = { at: t, levels };
    } catch (e) {
      log.warn({ err: e }, 'could not read recent launch failures; using the last host penalties read');
    }
    return penaltyCache?.levels ?? new Map<number, number>();
  };
  // Passes run at the end of the kicking event-loop turn, so everything submitted in the same turn shares one.
  const loop = makeLoop(async () => void (await pass()), { atTurnEnd: true, onError: (e) => log.error({ err: e }, 'scheduling pass failed; retrying on the next poll') });
  const kick = (): void => loop.kick();

  let limitsCache: { at: number; value: boolean } | undefined;
  /** Counts limit changes made through this replica (a cached "no limits" from before one is stale). */
  let limitsGen = 0;
  /**
   * For a second after a limit change here, "no limits" is neither cached nor trusted without asking again in
   * the placing transaction: a pass may read the store after the change was announced and before it (or jobs
   * submitted with it) became visible, and then claim jobs that are (seen on PostgreSQL, where a pass does not
   * wait for the writer's session).
   */
  let limitsUnsettledUntil = 0;
  const limitsExist = async (): Promise<boolean> => {
    if (limitsCache && Date.now() - limitsCache.at <= 1000) return limitsCache.value;
    const gen = limitsGen;
    const value = await anyTenantLimits(ctx.store.db);
    // An answer that a limit set meanwhile may have outdated is used once, not cached.
    if (gen === limitsGen && Date.now() >= limitsUnsettledUntil) limitsCache = { at: Date.now(), value };
    return value;
  };

  async function pass(): Promise<number> {
    const started = performance.now();
    freedDuringPass = false;
    const slots = registry.slots();
    if (slots.length === 0) {
      backlog = true;
      return 0;
    }
    const windows = new Map<Arch, ClaimWindow>();
    for (const s of slots) {
      const w = windows.get(s.arch) ?? { arch: s.arch, maxCpus: 0, maxMemoryBytes: 0, maxDiskBytes: 0 };
      w.maxCpus = Math.max(w.maxCpus, s.free.cpus);
      w.maxMemoryBytes = Math.max(w.maxMemoryBytes, s.free.memoryBytes);
      w.maxDiskBytes = Math.max(w.maxDiskBytes, s.free.diskBytes);
      windows.set(s.arch, w);
    }
    const live = [...windows.values()].filter((w) => w.maxCpus > 0);
    if (live.length === 0) {
      backlog = true;
      return 0;
    }
    // Asked outside the transaction: the embedded store has one session, which the transaction holds.
    const gen = limitsGen;
    let checkLimits = await limitsExist();
    const penalties = await hostPenalties();
    const { placed, claimed, waiting } = await ctx.store.withTransaction(async (tx) => {
      const { jobs, more } = await claimQueuedJobs(tx, ctx.options.batchSize, live);
      // Jobs too big for any host's free room right now are not claimed; whether any such job waits decides
      // if freed capacity is worth a pass (see capacityFreed).
      if (jobs.length === 0) return { placed: [] as (PlacedJob & { createdAt: string })[], claimed: 0, waiting: await anyQueued(tx) };
      // A limit set through this replica after the question above was asked, and before jobs it claimed were
      // submitted, must hold for them: ask again, in the transaction.
      if (!checkLimits && (gen !== limitsGen || Date.now() < limitsUnsettledUntil)) checkLimits = await anyTenantLimits(tx);
      const usage = checkLimits ? await tenantUsage(tx, [...new Set(jobs.map((j) => j.tenant))]) : new Map<string, { active: number; limit: number | null }>();
      const room = new Map([...usage].map(([t, u]) => [t, Math.max(0, (u.limit ?? Infinity) - u.active)]));
      const demands: JobDemand[] = jobs.map((j) => ({
        id: j.id,
        tenant: j.tenant,
        arch: j.requirements.arch,
        cpus: j.requirements.cpus,
        memoryBytes: j.requirements.memoryBytes,
        diskBytes: j.requirements.diskBytes,
        hostLabels: j.requirements.hostLabels,
        ...(j.cacheKey ? { cacheKey: j.cacheKey } : {}),
      }));
      const placements = placeJobs(slots, demands, room, penalties).placements;
      // The update itself keeps only placements on hosts this replica still owns and that still take jobs
      // (another replica may have cordoned one); the rest stay queued for the next pass.
      const done = await door.place(tx, placements, ctx.serverId);
      const ok = new Set(done.map((d) => d.id));
      for (const p of placements) {
        if (ok.has(p.jobId)) continue;
        const link = registry.get(p.hostId);
        if (link) link.schedulable = false;
        loop.kick();
      }
      const createdAt = new Map(jobs.map((j) => [j.id, j.createdAt]));
      const waiting = done.length < jobs.length || jobs.length >= ctx.options.batchSize || more === true;
      return { placed: done.map((d) => ({ ...d, createdAt: createdAt.get(d.id)! })), claimed: jobs.length, waiting };
    });
    // Jobs with a network get their tenant's and repository's egress allowlists with the launch (read at
    // most once a second: a changed allowlist holds for launches from then on).
    if (placed.some((j) => j.launch.network === 'user')) {
      const policies = await egressPolicies();
      for (const job of placed) {
        const allow = egressAllowFor(policies, { tenant: job.tenant, repo: job.egressRepo, network: job.launch.network });
        if (allow.length > 0) job.launch.egressAllow = allow;
      }
    }
    const at = Date.now();
    const report: Placement[] = [];
    for (const job of placed) {
      const link = registry.get(job.hostId);
      const latencyMs = at - Date.parse(job.createdAt);
      // Without a link the host left meanwhile: it reconciles (job lost, requeued) when it returns.
      report.push({ jobId: job.id, attempt: job.attempt, hostId: job.hostId, latencyMs, launched: link !== undefined });
      if (!link) continue;
      const r = job.launch;
      link.active.set(job.id, { attempt: job.attempt, cpus: r.cpus, memoryBytes: r.memoryBytes, diskBytes: r.diskBytes });
      link.send({ type: 'launch', jobId: job.id, attempt: job.attempt, spec: job.launch });
    }
    door.placed(report);
    if (placed.length > 0) log.debug({ placed: placed.length, claimed, ms: Math.round(performance.now() - started) }, 'placed jobs');
    // A full batch means more may be waiting.
    if (claimed >= ctx.options.batchSize && placed.length > 0) loop.kick();
    backlog = waiting;
    if (backlog && freedDuringPass) loop.kick();
    return placed.length;
  }

  /** Picks up drain/cordon changes made through other replicas. */
  async function refreshHostFlags(): Promise<void> {
    const ids = [...registry.links.keys()];
    if (ids.length === 0) return;
    let freed = false;
    for (const h of await hostStates(ctx.store.db, ids)) {
      const link = registry.get(h.id);
      if (!link) continue;
      const schedulable = h.state === 'online' && !h.cordoned && h.serverId === ctx.serverId;
      if (schedulable && !link.schedulable) freed = true;
      link.schedulable = schedulable;
    }
    if (freed) kick();
  }

  /** Stops VMs whose jobs were cancelled, timed out or reassigned through another replica. */
  async function checkStops(): Promise<void> {
    if (stopPollBusy) return;
    stopPollBusy = true;
    try {
      // The embedded store has no other replica: its drain, cordon and removal go through this process's
      // API, which updates the links itself, so reading 1,000 host rows every 5 s would only block the loop.
      if (ctx.store.kind !== 'pglite') await refreshHostFlags();
      // Judge only what was active when the question was asked: jobs launched meanwhile are not in the answer.
      const asked: { link: PoolHost; id: number; attempt: number }[] = [];
      for (const l of registry.links.values()) for (const [id, a] of l.active) asked.push({ link: l, id, attempt: a.attempt });
      if (asked.length === 0) return;
      const statuses = new Map((await jobStatuses(ctx.store.db, asked.map((x) => x.id))).map((s) => [s.id, s]));
      for (const { link: l, id, attempt } of asked) {
        if (l.stopping.has(id) || l.active.get(id)?.attempt !== attempt) continue;
        const s = statuses.get(id);
        const gone = !s || s.attempt !== attempt || s.hostId !== l.hostId;
        if (gone || isTerminal(s.state) || s.cancelRequested) {
          l.stopping.add(id);
          l.send({ type: 'stop', jobId: id, attempt, reason: s?.cancelRequested ? 'cancelled' : gone ? 'the job is no longer placed on this host' : `the job is ${s.state}` });
        }
      }
    } catch (e) {
      log.warn({ err: e }, 'could not check for jobs to stop');
    } finally {
      stopPollBusy = false;
    }
  }

  return {
    kick,
    capacityFreed() {
      if (backlog) kick();
      else if (loop.busy) freedDuringPass = true;
    },
    limitsChanged: () => {
      limitsCache = undefined;
      limitsGen++;
      limitsUnsettledUntil = Date.now() + 1000;
    },
    pass,
    start() {
      // The embedded store has no other replica: every submission and freed host kicks a pass here, so its
      // polls are only a safety net, and they are slower (its statements run on this event loop).
      const single = ctx.store.kind === 'pglite';
      poll = setInterval(kick, single ? Math.max(ctx.options.pollMs, 1000) : ctx.options.pollMs);
      // Local cancels stop VMs at once (the gateway); this catches changes made through other replicas and
      // server-side timeouts (the leader's, a fallback 30 s past the agent's own).
      stopPoll = setInterval(() => void checkStops(), single ? 5000 : Math.max(ctx.options.pollMs * 4, 1000));
      // Work accepted here (the API, GitHub) gets a pass at the end of its event-loop turn.
      offSubmitted = ctx.events.on('job.submitted', kick);
      // A failure reported here is stored already: the next pass reads the penalties afresh.
      offFailed = ctx.events.on('host.launch_failed', (e) => {
        penaltyCache = undefined;
        penaltyGen++;
        log.info({ hostId: e.hostId, jobId: e.jobId, code: e.code }, 'launch failed on host; other hosts preferred for a while');
      });
      loop.start();
    },
    async stop() {
      offSubmitted?.();
      offFailed?.();
      clearInterval(poll);
      clearInterval(stopPoll);
      await loop.stop();
    },
  };
}
