/** Host queries: register on connect, heartbeat, ownership by a server replica, operator actions. */
import type { HostCacheMsg } from '../core/agent-protocol.ts';
import { sql } from 'kysely';
import type { Arch } from '../core/arch.ts';
import type { HostCapacity, HostPowerMsg } from '../core/agent-protocol.ts';
import type { Host, HostMirror } from '../core/host.ts';
import { nextHostState, type HostState } from '../core/host-state.ts';
import type { Db, Tx } from './store.ts';
import type { HostRow } from './schema.ts';
import { idIn } from './id-list.ts';
import { answerPowerRequests } from './power.ts';
import { randomBytes } from 'node:crypto';
import { KilnError } from '../core/errors.ts';
import { hashSecret } from './tokens.ts';

type Q = Db | Tx;
const iso = (d: Date | null): string | null => (d ? new Date(d).toISOString() : null);

export function hostFromRow(r: HostRow): Host {
  return {
    id: r.id,
    name: r.name,
    state: r.state as HostState,
    cordoned: r.cordoned,
    drainRequested: r.drain_requested,
    arch: r.arch as Arch,
    capacity: { cpus: r.cpus, memoryBytes: r.memory_bytes, diskBytes: r.disk_bytes },
    accel: r.accel === 'kvm' ? 'kvm' : r.accel === 'tcg' ? 'tcg' : 'none',
    labels: r.labels,
    driver: r.driver,
    agentVersion: r.agent_version,
    serverId: r.server_id,
    connectedAt: iso(r.connected_at),
    lastSeenAt: iso(r.last_seen_at) ?? '',
    createdAt: iso(r.created_at) ?? '',
    mirror: r.mirror ?? null,
    ...(r.caches ? { caches: r.caches } : {}),
    stateSince: iso(r.state_since) ?? '',
    power: r.power ?? null,
    wakeFailures: r.wake_failures,
    wakeMarkedUntil: iso(r.wake_marked_until),
  };
}

/** A wake request that this connect answered. */
export interface WakeAnswered {
  requestId: number;
  reason: string;
  jobs: number;
  /** Milliseconds from the request to this connect. */
  latencyMs: number;
}

/** What a host may claim (docs/security.md, "Host identity"). */
export interface HostPolicy {
  maxCpus: number;
  maxMemoryBytes: number;
  maxDiskBytes: number;
}

export const DEFAULT_HOST_POLICY: HostPolicy = { maxCpus: 1024, maxMemoryBytes: 16 * 1024 ** 4, maxDiskBytes: 1024 ** 5 };

/** Host names that read as numbers would make `kiln hosts cordon 1` ambiguous (id 1, or a host named "1"). */
export function checkHostName(name: string): void {
  if (/^\d+$/.test(name)) {
    throw new KilnError('host.bad_name', `host name "${name}" is all digits, which reads as a host id`, { hint: 'give the agent a --name with a letter in it' });
  }
}

/**
 * Registers (or re-registers) a host as connected to `serverId`. A host is bound to its first registration:
 * that registration gets a credential (returned once as `issued`, stored hashed), and a later hello for the
 * same name must present it; a host registered before credentials existed adopts one on its next hello.
 * The capacity a host first reported caps what it may claim later (less is fine: disks fill up), and the
 * policy caps every claim. An operator removes a host (`kiln hosts rm`) to let another machine take its name.
 * A wake under way for it is answered (done) and its wake failures forgotten; a sleep not yet carried out is
 * cancelled (the host came back before it slept).
 */
export async function registerHost(
  db: Db,
  cap: HostCapacity,
  serverId: string,
  mirror?: HostMirror,
  identity: { credential?: string; policy?: HostPolicy; unchecked?: boolean } = {},
  power?: HostPowerMsg,
): Promise<{ host: Host & { woke?: WakeAnswered }; issued?: string }> {
  checkHostName(cap.name);
  const policy = identity.policy ?? DEFAULT_HOST_POLICY;
  const over = [
    cap.cpus > policy.maxCpus ? `${cap.cpus} CPUs (policy: at most ${policy.maxCpus})` : '',
    cap.memoryBytes > policy.maxMemoryBytes ? `${cap.memoryBytes} bytes of memory (policy: at most ${policy.maxMemoryBytes})` : '',
    cap.diskBytes > policy.maxDiskBytes ? `${cap.diskBytes} bytes of disk (policy: at most ${policy.maxDiskBytes})` : '',
  ].filter(Boolean);
  if (over.length > 0) throw new KilnError('host.capacity_refused', `host ${cap.name} claims ${over.join(', ')}`, { hint: 'cap what the agent offers with --cpus/--memory/--disk' });
  return db.transaction().execute(async (tx) => {
    const existing = await tx.selectFrom('hosts').selectAll().where('name', '=', cap.name).forUpdate().executeTakeFirst();
    if (!identity.unchecked && existing?.secret_hash && (!identity.credential || hashSecret(identity.credential) !== existing.secret_hash)) {
      throw new KilnError('host.identity_refused', `host ${cap.name} is registered to another machine (its credential ${identity.credential ? 'does not match' : 'is missing'})`, {
        hint: `if this machine replaces it, an admin removes the old registration first: kiln hosts rm ${cap.name} --force`,
      });
    }
    if (!identity.unchecked && existing && existing.registered_cpus !== null) {
      const grew = [
        cap.cpus > existing.registered_cpus ? `CPUs ${existing.registered_cpus} → ${cap.cpus}` : '',
        existing.registered_memory_bytes !== null && cap.memoryBytes > existing.registered_memory_bytes ? `memory ${existing.registered_memory_bytes} → ${cap.memoryBytes} bytes` : '',
        existing.registered_disk_bytes !== null && cap.diskBytes > existing.registered_disk_bytes ? `disk ${existing.registered_disk_bytes} → ${cap.diskBytes} bytes` : '',
      ].filter(Boolean);
      if (grew.length > 0) {
        throw new KilnError('host.capacity_refused', `host ${cap.name} claims more than it registered with (${grew.join(', ')})`, {
          hint: `an admin re-registers an upgraded host: kiln hosts rm ${cap.name} --force, then restart its agent`,
        });
      }
    }
    const issued = existing?.secret_hash ? undefined : makeHostCredential();
    const state = nextHostState((existing?.state as HostState | undefined) ?? 'offline', { type: 'connect', draining: existing?.drain_requested ?? false });
    const values = {
      state,
      arch: cap.arch,
      cpus: cap.cpus,
      memory_bytes: cap.memoryBytes,
      disk_bytes: cap.diskBytes,
      accel: cap.accel,
      labels: JSON.stringify(cap.labels),
      driver: cap.driver,
      agent_version: cap.agentVersion,
      server_id: serverId,
      connected_at: sql<Date>`now()`,
      last_seen_at: sql<Date>`now()`,
      mirror: mirror ? JSON.stringify({ ...mirror, reportedAt: new Date().toISOString() }) : null,
      power: JSON.stringify({ ...(power ?? { driver: 'none' }), ...(existing?.power?.lastError ? { lastError: existing.power.lastError } : {}) }),
      wake_failures: 0,
      wake_marked_until: null,
      ...(issued ? { secret_hash: hashSecret(issued) } : {}),
      ...(existing?.registered_cpus == null ? { registered_cpus: cap.cpus, registered_memory_bytes: cap.memoryBytes, registered_disk_bytes: cap.diskBytes } : {}),
    };
    const row = existing
      ? await tx.updateTable('hosts').set(values).where('id', '=', existing.id).returningAll().executeTakeFirstOrThrow()
      : await tx.insertInto('hosts').values({ name: cap.name, ...values }).returningAll().executeTakeFirstOrThrow();
    const answered = await answerPowerRequests(tx, row.id);
    return { host: { ...hostFromRow(row), ...(answered ? { woke: answered } : {}) }, ...(issued ? { issued } : {}) };
  });
}

/**
 * Registers a host without the identity and capacity checks (store tests and tools that register hosts
 * directly); agents always go through `registerHost` with their credential.
 */
export async function connectHost(db: Db, cap: HostCapacity, serverId: string, mirror?: HostMirror, power?: HostPowerMsg): Promise<Host & { woke?: WakeAnswered }> {
  return (await registerHost(db, cap, serverId, mirror, { unchecked: true }, power)).host;
}

function makeHostCredential(): string {
  return `kiln_host_${randomBytes(24).toString('base64url')}`;
}

/** Stores the warm caches a host's agent reported (docs/caches.md), if `serverId` still owns the host. */
export async function setHostCaches(db: Q, hostId: number, serverId: string, caches: HostCacheMsg[]): Promise<boolean> {
  const r = await db.updateTable('hosts').set({ caches: JSON.stringify(caches) }).where('id', '=', hostId).where('server_id', '=', serverId).executeTakeFirst();
  return Number(r.numUpdatedRows) > 0;
}

/** Stores the mirror status a host's agent reported (null: it runs none), if `serverId` still owns the host. */
export async function setHostMirror(db: Q, hostId: number, serverId: string, mirror: HostMirror | null): Promise<boolean> {
  const value = mirror ? JSON.stringify({ ...mirror, reportedAt: new Date().toISOString() }) : null;
  const r = await db.updateTable('hosts').set({ mirror: value, last_seen_at: sql`now()` }).where('id', '=', hostId).where('server_id', '=', serverId).executeTakeFirst();
  return Number(r.numUpdatedRows) > 0;
}

/**
 * Marks a host offline, but only if `serverId` still owns it (it may have reconnected elsewhere) and, given
 * `connectedAt` (the connection's own connect time), only if no newer connection of it has registered
 * meanwhile: an agent that closes and reconnects at once (a sleep command that failed) may have its new
 * hello stored before its old connection's close is handled.
 */
export async function disconnectHost(db: Q, hostId: number, serverId: string, connectedAt?: string | null): Promise<boolean> {
  let q = db
    .updateTable('hosts')
    .set({ state: sql`CASE WHEN state = 'asleep' THEN 'asleep' ELSE 'offline' END`, server_id: null, last_seen_at: sql`now()` })
    .where('id', '=', hostId)
    .where('server_id', '=', serverId);
  if (connectedAt) q = q.where(sql<boolean>`date_trunc('milliseconds', connected_at) <= ${connectedAt}::timestamptz`);
  const r = await q.executeTakeFirst();
  return Number(r.numUpdatedRows) > 0;
}

export async function touchHosts(db: Q, serverId: string, hostIds: number[]): Promise<void> {
  if (hostIds.length === 0) return;
  await db.updateTable('hosts').set({ last_seen_at: sql`now()` }).where('server_id', '=', serverId).where(idIn('id', hostIds)).execute();
}

/**
 * Hosts not vouched for in `staleMs` that still hold active jobs: disconnected ones, and connected ones
 * whose replica stopped touching them (it died).
 */
export async function lostHosts(db: Q, staleMs: number): Promise<Host[]> {
  const rows = await db
    .selectFrom('hosts')
    .selectAll()
    .where('state', 'in', ['online', 'draining', 'offline'])
    .where(({ exists, selectFrom }) =>
      exists(selectFrom('jobs').select('jobs.id').whereRef('jobs.host_id', '=', 'hosts.id').where('jobs.state', 'in', ['placed', 'booting', 'running'])),
    )
    .where(sql<boolean>`last_seen_at < now() - make_interval(secs => ${staleMs}::double precision / 1000)`)
    .execute();
  return rows.map(hostFromRow);
}

/** Marks a stale host offline unless it was seen again meanwhile. */
export async function expireHost(db: Q, hostId: number, staleMs: number): Promise<boolean> {
  const r = await db
    .updateTable('hosts')
    .set({ state: 'offline', server_id: null })
    .where('id', '=', hostId)
    .where('state', 'in', ['online', 'draining', 'offline'])
    .where(sql<boolean>`last_seen_at < now() - make_interval(secs => ${staleMs}::double precision / 1000)`)
    .executeTakeFirst();
  return Number(r.numUpdatedRows) > 0;
}

/** Locks the hosts this replica owns among `hostIds` and says which may take jobs now. */
export async function lockSchedulableHosts(tx: Tx, hostIds: number[], serverId: string): Promise<Set<number>> {
  if (hostIds.length === 0) return new Set();
  const rows = await tx
    .selectFrom('hosts')
    .select('id')
    .where(idIn('id', hostIds))
    .where('server_id', '=', serverId)
    .where('state', '=', 'online')
    .where('cordoned', '=', false)
    .orderBy('id')
    .forUpdate()
    .execute();
  return new Set(rows.map((r) => r.id));
}

export async function hostStates(db: Q, ids: number[]): Promise<{ id: number; state: HostState; cordoned: boolean; serverId: string | null }[]> {
  if (ids.length === 0) return [];
  const rows = await db.selectFrom('hosts').select(['id', 'state', 'cordoned', 'server_id']).where(idIn('id', ids)).execute();
  return rows.map((r) => ({ id: r.id, state: r.state as HostState, cordoned: r.cordoned, serverId: r.server_id }));
}

/** Hosts by name; a page of at most `limit` after the name `after` when given. */
export async function listHosts(db: Q, page: { after?: string | undefined; limit?: number } = {}): Promise<Host[]> {
  let q = db.selectFrom('hosts').selectAll().orderBy('name');
  if (page.after !== undefined) q = q.where('name', '>', page.after);
  if (page.limit !== undefined) q = q.limit(page.limit);
  return (await q.execute()).map(hostFromRow);
}

/** A host by reference: all digits is an id (host names may not be all digits), anything else a name. */
export async function findHost(db: Q, ref: string): Promise<Host | undefined> {
  const byId = /^\d{1,15}$/.test(ref) ? Number(ref) : undefined;
  if (byId === undefined && /^\d+$/.test(ref)) return undefined;
  const q = db.selectFrom('hosts').selectAll();
  const r = await (byId !== undefined ? q.where('id', '=', byId) : q.where('name', '=', ref)).executeTakeFirst();
  return r ? hostFromRow(r) : undefined;
}

export async function updateHostFlags(
  db: Q,
  id: number,
  change: { cordoned?: boolean; drainRequested?: boolean; state?: HostState },
): Promise<Host | undefined> {
  const r = await db
    .updateTable('hosts')
    .set({
      ...(change.cordoned !== undefined ? { cordoned: change.cordoned } : {}),
      ...(change.drainRequested !== undefined ? { drain_requested: change.drainRequested } : {}),
      ...(change.state !== undefined ? { state: change.state } : {}),
    })
    .where('id', '=', id)
    .returningAll()
    .executeTakeFirst();
  return r ? hostFromRow(r) : undefined;
}

export async function deleteHost(db: Q, id: number): Promise<boolean> {
  const r = await db.deleteFrom('hosts').where('id', '=', id).executeTakeFirst();
  return Number(r.numDeletedRows) > 0;
}

export async function heartbeatServer(db: Q, serverId: string, url: string | null): Promise<void> {
  await db
    .insertInto('servers')
    .values({ id: serverId, url, last_seen_at: sql`now()` })
    .onConflict((oc) => oc.column('id').doUpdateSet({ last_seen_at: sql`now()`, url }))
    .execute();
}
