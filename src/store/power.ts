/**
 * Host power queries: the durable sleep/wake requests (one open request per host, enforced by the partial
 * unique index power_requests_open), the host state changes that go with them, and what the power policy
 * reads (the fleet with its usage, the queued demand by shape).
 */
import { sql } from 'kysely';
import type { Arch } from '../core/arch.ts';
import type { HostState } from '../core/host-state.ts';
import type { HostPower } from '../core/power.ts';
import type { Db, Tx } from './store.ts';
import type { PowerRequestRow } from './schema.ts';

type Q = Db | Tx;

/**
 * The predicate of the partial unique index power_requests_open, as literals: ON CONFLICT infers the index
 * only when this predicate implies the index's, which a parameter does not under a generic plan (a prepared
 * statement after its fifth use; the embedded store prepares hot statements), so with bound values the
 * ninth sleep or wake request failed with "no unique or exclusion constraint matching the ON CONFLICT".
 */
const OPEN_REQUEST = sql<boolean>`state IN ('pending', 'sent')`;
const iso = (d: Date | null): string | null => (d ? new Date(d).toISOString() : null);

export type PowerRequestKind = 'sleep' | 'wake';
export type PowerRequestState = 'pending' | 'sent' | 'done' | 'failed' | 'cancelled';

export interface PowerRequest {
  id: number;
  hostId: number;
  hostName?: string;
  kind: PowerRequestKind;
  state: PowerRequestState;
  reason: string;
  jobs: number;
  attempts: number;
  notBefore: string;
  deadline: string | null;
  error: string | null;
  createdAt: string;
  sentAt: string | null;
  doneAt: string | null;
}

function requestFromRow(r: PowerRequestRow & { host_name?: string }): PowerRequest {
  return {
    id: r.id,
    hostId: r.host_id,
    ...(r.host_name !== undefined ? { hostName: r.host_name } : {}),
    kind: r.kind,
    state: r.state,
    reason: r.reason,
    jobs: r.jobs,
    attempts: r.attempts,
    notBefore: iso(r.not_before) ?? '',
    deadline: iso(r.deadline),
    error: r.error,
    createdAt: iso(r.created_at) ?? '',
    sentAt: iso(r.sent_at),
    doneAt: iso(r.done_at),
  };
}

/** A host as the power manager reads it: state, capacity, driver, usage and any request under way. */
export interface PowerHostRow {
  id: number;
  name: string;
  state: HostState;
  cordoned: boolean;
  drainRequested: boolean;
  arch: Arch;
  labels: string[];
  cpus: number;
  memoryBytes: number;
  diskBytes: number;
  power: HostPower | null;
  serverId: string | null;
  stateSinceMs: number;
  wakeFailures: number;
  wakeMarkedUntilMs: number | undefined;
  activeJobs: number;
  used: { cpus: number; memoryBytes: number; diskBytes: number };
  openRequest: PowerRequestKind | undefined;
  /** Cache keys the host's agent last reported (kept while it sleeps). */
  caches: string[];
}

/**
 * Hosts per state, and how many have a power driver (one that can put them to sleep or have them woken:
 * reported and not `none`). One scan of the hosts table, no join: what the leader reads every second before
 * it decides whether there is anything to decide.
 */
export async function powerSummary(db: Q): Promise<{ states: Map<HostState, number>; managed: number }> {
  const r = await sql<{ state: string; n: number; managed: number }>`
    SELECT state, count(*)::int AS n, (count(*) FILTER (WHERE power IS NOT NULL AND power->>'driver' IS DISTINCT FROM 'none'))::int AS managed
    FROM hosts GROUP BY state`.execute(db);
  return { states: new Map(r.rows.map((x) => [x.state as HostState, x.n])), managed: r.rows.reduce((a, x) => a + x.managed, 0) };
}

export async function powerHosts(db: Q): Promise<PowerHostRow[]> {
  const rows = await sql<{
    id: number;
    name: string;
    state: string;
    cordoned: boolean;
    drain_requested: boolean;
    arch: string;
    labels: string[];
    cpus: number;
    memory_bytes: number;
    disk_bytes: number;
    power: HostPower | null;
    server_id: string | null;
    state_since: Date;
    wake_failures: number;
    wake_marked_until: Date | null;
    active: number;
    used_cpus: number;
    used_memory: number;
    used_disk: number;
    open_kind: PowerRequestKind | null;
    caches: { key: string }[] | null;
  }>`
    SELECT h.id, h.name, h.state, h.cordoned, h.drain_requested, h.arch, h.labels, h.cpus, h.memory_bytes, h.disk_bytes,
           h.power, h.server_id, h.state_since, h.wake_failures, h.wake_marked_until, h.caches,
           coalesce(u.active, 0)::int AS active, coalesce(u.cpus, 0)::int AS used_cpus,
           coalesce(u.memory, 0)::bigint AS used_memory, coalesce(u.disk, 0)::bigint AS used_disk,
           (SELECT r.kind FROM power_requests r WHERE r.host_id = h.id AND r.state IN ('pending','sent') LIMIT 1) AS open_kind
    FROM hosts h
    LEFT JOIN LATERAL (
      SELECT count(*) AS active, sum(j.cpus) AS cpus, sum(j.memory_bytes) AS memory, sum(j.disk_bytes) AS disk
      FROM jobs j WHERE j.host_id = h.id AND j.state IN ('placed','booting','running')
    ) u ON true
    ORDER BY h.name`.execute(db);
  return rows.rows.map((r) => ({
    id: Number(r.id),
    name: r.name,
    state: r.state as HostState,
    cordoned: r.cordoned,
    drainRequested: r.drain_requested,
    arch: r.arch as Arch,
    labels: r.labels,
    cpus: r.cpus,
    memoryBytes: Number(r.memory_bytes),
    diskBytes: Number(r.disk_bytes),
    power: r.power,
    serverId: r.server_id,
    stateSinceMs: new Date(r.state_since).getTime(),
    wakeFailures: r.wake_failures,
    wakeMarkedUntilMs: r.wake_marked_until ? new Date(r.wake_marked_until).getTime() : undefined,
    activeJobs: r.active,
    used: { cpus: r.used_cpus, memoryBytes: Number(r.used_memory), diskBytes: Number(r.used_disk) },
    openRequest: r.open_kind ?? undefined,
    caches: (r.caches ?? []).map((c) => c.key),
  }));
}

/** Queued jobs grouped by shape (what the policy places on awake capacity and on hosts it could wake). */
export async function queuedDemand(db: Q): Promise<{ arch: Arch; hostLabels: string[]; cpus: number; memoryBytes: number; diskBytes: number; count: number; cacheKey?: string }[]> {
  const rows = await sql<{ arch: string; host_labels: string[]; cpus: number; memory_bytes: number; disk_bytes: number; cache_key: string | null; n: number }>`
    SELECT arch, host_labels, cpus, memory_bytes, disk_bytes, cache->>'key' AS cache_key, count(*)::int AS n
    FROM jobs WHERE state = 'queued'
    GROUP BY arch, host_labels, cpus, memory_bytes, disk_bytes, cache->>'key'`.execute(db);
  return rows.rows.map((r) => ({
    arch: r.arch as Arch,
    hostLabels: r.host_labels,
    cpus: r.cpus,
    memoryBytes: Number(r.memory_bytes),
    diskBytes: Number(r.disk_bytes),
    count: r.n,
    ...(r.cache_key ? { cacheKey: r.cache_key } : {}),
  }));
}

/**
 * Opens a wake request for an asleep host and marks it waking, in one transaction; undefined when the host
 * is not asleep or already has a request under way (so a second pass or replica changes nothing).
 * `operator` wakes also take a host that failed to wake (and clear its mark).
 */
export async function requestWake(db: Db, hostId: number, reason: string, jobs: number): Promise<PowerRequest | undefined> {
  return db.transaction().execute(async (tx) => {
    const host = await tx
      .updateTable('hosts')
      .set({ state: 'waking', ...(reason === 'operator' ? { wake_marked_until: null, wake_failures: 0 } : {}) })
      .where('id', '=', hostId)
      .where('state', '=', 'asleep')
      .where(({ not, exists, selectFrom }) => not(exists(selectFrom('power_requests').select('id').whereRef('power_requests.host_id', '=', 'hosts.id').where('power_requests.state', 'in', ['pending', 'sent']))))
      .returning('id')
      .executeTakeFirst();
    if (!host) return undefined;
    const r = await tx
      .insertInto('power_requests')
      .values({ host_id: hostId, kind: 'wake', state: 'pending', reason, jobs })
      .onConflict((oc) => oc.column('host_id').where(OPEN_REQUEST).doNothing())
      .returningAll()
      .executeTakeFirst();
    if (!r) throw new Error('a power request for this host appeared meanwhile'); // rolls the host back
    return requestFromRow(r);
  });
}

/**
 * Opens a sleep request for an online host and marks it draining (no new jobs), in one transaction;
 * undefined when it is not online, is cordoned or drained by an operator, or has a request under way.
 */
export async function requestSleep(db: Db, hostId: number, reason: string): Promise<PowerRequest | undefined> {
  return db.transaction().execute(async (tx) => {
    const host = await tx
      .updateTable('hosts')
      .set({ state: 'draining' })
      .where('id', '=', hostId)
      .where('state', '=', 'online')
      .where('drain_requested', '=', false)
      .where('server_id', 'is not', null)
      .where(({ not, exists, selectFrom }) => not(exists(selectFrom('power_requests').select('id').whereRef('power_requests.host_id', '=', 'hosts.id').where('power_requests.state', 'in', ['pending', 'sent']))))
      .returning('id')
      .executeTakeFirst();
    if (!host) return undefined;
    const r = await tx
      .insertInto('power_requests')
      .values({ host_id: hostId, kind: 'sleep', state: 'pending', reason })
      .onConflict((oc) => oc.column('host_id').where(OPEN_REQUEST).doNothing())
      .returningAll()
      .executeTakeFirst();
    if (!r) throw new Error('a power request for this host appeared meanwhile');
    return requestFromRow(r);
  });
}

/** Sleep requests for hosts whose connection `serverId` owns, marked sent (this replica tells the agents). */
export async function claimSleepRequests(db: Q, serverId: string, answerWithinMs: number): Promise<PowerRequest[]> {
  const rows = await db
    .updateTable('power_requests')
    .set({
      state: 'sent',
      attempts: sql`attempts + 1`,
      sent_at: sql`now()`,
      deadline: sql`now() + make_interval(secs => ${answerWithinMs}::double precision / 1000)`,
      lease_owner: serverId,
    })
    .where('kind', '=', 'sleep')
    .where('state', '=', 'pending')
    .where(({ exists, selectFrom }) => exists(selectFrom('hosts').select('hosts.id').whereRef('hosts.id', '=', 'power_requests.host_id').where('hosts.server_id', '=', serverId)))
    .returningAll()
    .execute();
  return rows.map(requestFromRow);
}

/** The agent drained and is about to sleep: the host is asleep (if `serverId` still owns it) and the request done. */
export async function markAsleep(db: Db, hostId: number, serverId: string, requestId: number, power: HostPower): Promise<boolean> {
  return db.transaction().execute(async (tx) => {
    const prev = await tx.selectFrom('hosts').select('power').where('id', '=', hostId).executeTakeFirst();
    const h = await tx
      .updateTable('hosts')
      .set({ state: 'asleep', power: JSON.stringify({ ...power, ...(prev?.power?.lastError ? { lastError: prev.power.lastError } : {}) }) })
      .where('id', '=', hostId)
      .where('server_id', '=', serverId)
      .where('state', 'in', ['online', 'draining'])
      .where('drain_requested', '=', false)
      .returning('id')
      .executeTakeFirst();
    if (!h) return false;
    await tx
      .updateTable('power_requests')
      .set({ state: 'done', done_at: sql`now()` })
      .where('host_id', '=', hostId)
      .where('kind', '=', 'sleep')
      .where('state', 'in', ['pending', 'sent'])
      .execute();
    void requestId;
    return true;
  });
}

/** Records a power error on the host (shown by the API) and fails its open sleep request. */
export async function recordPowerError(db: Db, hostId: number, action: 'sleep' | 'wake', message: string): Promise<void> {
  await db.transaction().execute(async (tx) => {
    const prev = await tx.selectFrom('hosts').select('power').where('id', '=', hostId).forUpdate().executeTakeFirst();
    if (!prev) return;
    const power: HostPower = { ...(prev.power ?? { driver: 'none' }), lastError: { at: new Date().toISOString(), action, message } };
    await tx.updateTable('hosts').set({ power: JSON.stringify(power) }).where('id', '=', hostId).execute();
    if (action === 'sleep') {
      await tx.updateTable('power_requests').set({ state: 'failed', error: message, done_at: sql`now()` }).where('host_id', '=', hostId).where('kind', '=', 'sleep').where('state', 'in', ['pending', 'sent']).execute();
      await tx.updateTable('hosts').set({ state: 'online' }).where('id', '=', hostId).where('state', '=', 'draining').where('drain_requested', '=', false).where('server_id', 'is not', null).execute();
    }
  });
}

/** Called in connectHost's transaction: a wake under way is done; a sleep not carried out is cancelled. */
export async function answerPowerRequests(tx: Tx, hostId: number): Promise<{ requestId: number; reason: string; jobs: number; latencyMs: number } | undefined> {
  await tx.updateTable('power_requests').set({ state: 'cancelled', done_at: sql`now()`, error: 'the host connected again before it slept' }).where('host_id', '=', hostId).where('kind', '=', 'sleep').where('state', 'in', ['pending', 'sent']).execute();
  const r = await tx
    .updateTable('power_requests')
    .set({ state: 'done', done_at: sql`now()` })
    .where('host_id', '=', hostId)
    .where('kind', '=', 'wake')
    .where('state', 'in', ['pending', 'sent'])
    .returning(['id', 'reason', 'jobs', sql<number>`extract(epoch FROM now() - created_at) * 1000`.as('latency_ms')])
    .executeTakeFirst();
  return r ? { requestId: r.id, reason: r.reason, jobs: r.jobs, latencyMs: Number(r.latency_ms) } : undefined;
}

/**
 * Wake requests due to be sent (pending, past their backoff, not leased by a live sender), leased to
 * `owner` for `leaseMs` with the attempt counted. A sender that dies before marking them sent loses its
 * lease and the next one sends again (at least once; waking twice is harmless, never waking is not).
 */
export async function claimWakeRequests(db: Q, owner: string, leaseMs: number): Promise<(PowerRequest & { hostName: string; power: HostPower | null })[]> {
  const rows = await sql<PowerRequestRow & { host_name: string; power: HostPower | null }>`
    UPDATE power_requests r SET lease_owner = ${owner}, lease_until = now() + make_interval(secs => ${leaseMs}::double precision / 1000), attempts = r.attempts + 1
    FROM hosts h
    WHERE h.id = r.host_id AND r.kind = 'wake' AND r.state = 'pending' AND r.not_before <= now()
      AND (r.lease_until IS NULL OR r.lease_until < now())
    RETURNING r.*, h.name AS host_name, h.power`.execute(db);
  return rows.rows.map((r) => ({ ...requestFromRow(r), hostName: r.host_name, power: r.power }));
}

/** The wake was sent: the host has `answerWithinMs` to connect. */
export async function markWakeSent(db: Q, id: number, owner: string, answerWithinMs: number): Promise<boolean> {
  const r = await db
    .updateTable('power_requests')
    .set({ state: 'sent', sent_at: sql`coalesce(sent_at, now())`, deadline: sql`now() + make_interval(secs => ${answerWithinMs}::double precision / 1000)`, lease_owner: null, lease_until: null })
    .where('id', '=', id)
    .where('state', '=', 'pending')
    .where('lease_owner', '=', owner)
    .executeTakeFirst();
  return Number(r.numUpdatedRows) > 0;
}

/** Requests whose answer is overdue (a wake whose host never connected, a sleep never carried out). */
export async function overdueRequests(db: Q): Promise<PowerRequest[]> {
  const rows = await db.selectFrom('power_requests').selectAll().where('state', '=', 'sent').where('deadline', '<', sql<Date>`now()`).execute();
  return rows.map(requestFromRow);
}

/** A wake attempt failed or went unanswered: try again after `backoffMs`. */
export async function retryWake(db: Q, id: number, backoffMs: number, error: string): Promise<boolean> {
  const r = await db
    .updateTable('power_requests')
    .set({ state: 'pending', not_before: sql`now() + make_interval(secs => ${backoffMs}::double precision / 1000)`, deadline: null, error, lease_owner: null, lease_until: null })
    .where('id', '=', id)
    .where('state', 'in', ['pending', 'sent'])
    .executeTakeFirst();
  return Number(r.numUpdatedRows) > 0;
}

/** A wake gave up: the host is asleep again, marked until `markedForMs` from now, so another is tried. */
export async function failWake(db: Db, id: number, hostId: number, markedForMs: number, error: string): Promise<boolean> {
  return db.transaction().execute(async (tx) => {
    const r = await tx.updateTable('power_requests').set({ state: 'failed', error, done_at: sql`now()`, lease_owner: null, lease_until: null }).where('id', '=', id).where('state', 'in', ['pending', 'sent']).executeTakeFirst();
    if (Number(r.numUpdatedRows) === 0) return false;
    await tx
      .updateTable('hosts')
      .set({ state: sql`CASE WHEN state = 'waking' THEN 'asleep' ELSE state END`, wake_failures: sql`wake_failures + 1`, wake_marked_until: sql`now() + make_interval(secs => ${markedForMs}::double precision / 1000)` })
      .where('id', '=', hostId)
      .execute();
    const prev = await tx.selectFrom('hosts').select('power').where('id', '=', hostId).executeTakeFirst();
    const power: HostPower = { ...(prev?.power ?? { driver: 'none' }), lastError: { at: new Date().toISOString(), action: 'wake', message: error } };
    await tx.updateTable('hosts').set({ power: JSON.stringify(power) }).where('id', '=', hostId).execute();
    return true;
  });
}

/** A sleep the agent never carried out: failed; the host takes jobs again if it is still connected. */
export async function failSleep(db: Db, id: number, hostId: number, error: string): Promise<boolean> {
  return db.transaction().execute(async (tx) => {
    const r = await tx.updateTable('power_requests').set({ state: 'failed', error, done_at: sql`now()` }).where('id', '=', id).where('state', 'in', ['pending', 'sent']).executeTakeFirst();
    if (Number(r.numUpdatedRows) === 0) return false;
    await tx.updateTable('hosts').set({ state: 'online' }).where('id', '=', hostId).where('state', '=', 'draining').where('drain_requested', '=', false).where('server_id', 'is not', null).execute();
    return true;
  });
}

/** Sleep requests whose host has no connection any more: cancelled (it went away before it slept). */
export async function cancelOrphanSleeps(db: Q): Promise<number> {
  const r = await db
    .updateTable('power_requests')
    .set({ state: 'cancelled', done_at: sql`now()`, error: 'the host disconnected before it slept' })
    .where('kind', '=', 'sleep')
    .where('state', 'in', ['pending', 'sent'])
    .where(({ exists, selectFrom }) => exists(selectFrom('hosts').select('hosts.id').whereRef('hosts.id', '=', 'power_requests.host_id').where('hosts.server_id', 'is', null)))
    .executeTakeFirst();
  return Number(r.numUpdatedRows);
}

export async function listPowerRequests(db: Q, limit = 100): Promise<PowerRequest[]> {
  const rows = await db
    .selectFrom('power_requests')
    .innerJoin('hosts', 'hosts.id', 'power_requests.host_id')
    .selectAll('power_requests')
    .select('hosts.name as host_name')
    .orderBy('power_requests.id', 'desc')
    .limit(limit)
    .execute();
  return rows.map(requestFromRow);
}
