/** Tenant queries: concurrency limits, and what each tenant runs and waits for. */
import { sql } from 'kysely';
import { ACTIVE_STATES } from '../core/job-state.ts';
import type { Db, Tx } from './store.ts';

type Q = Db | Tx;

/** Active jobs per tenant, and the limits of tenants that have one (rows locked so replicas agree). */
export async function tenantUsage(tx: Tx, tenants: string[]): Promise<Map<string, { active: number; limit: number | null }>> {
  const out = new Map<string, { active: number; limit: number | null }>();
  if (tenants.length === 0) return out;
  const limits = await tx.selectFrom('tenants').selectAll().where('name', 'in', tenants).forUpdate().execute();
  const limited = limits.filter((l) => l.max_concurrent !== null);
  for (const l of limited) out.set(l.name, { active: 0, limit: l.max_concurrent });
  if (limited.length === 0) return out;
  const counts = await tx
    .selectFrom('jobs')
    .select(['tenant', sql<number>`count(*)::int`.as('n')])
    .where('tenant', 'in', limited.map((l) => l.name))
    .where('state', 'in', [...ACTIVE_STATES])
    .groupBy('tenant')
    .execute();
  for (const c of counts) {
    const e = out.get(c.tenant);
    if (e) e.active = c.n;
  }
  return out;
}

/** Whether any tenant has a concurrency limit (the scheduler skips the limit query when none does). */
export async function anyTenantLimits(db: Q): Promise<boolean> {
  const r = await db.selectFrom('tenants').select('name').where('max_concurrent', 'is not', null).limit(1).execute();
  return r.length > 0;
}

export interface TenantInfo {
  name: string;
  maxConcurrent: number | null;
  active: number;
  queued: number;
}

/** Every tenant with a limit or jobs queued or active: its limit and what it runs and waits for now. */
export async function listTenants(db: Q): Promise<TenantInfo[]> {
  const r = await sql<{ name: string; max_concurrent: number | null; active: number; queued: number }>`
    WITH counts AS (
      SELECT tenant,
        count(*) FILTER (WHERE state IN ('placed','booting','running'))::int AS active,
        count(*) FILTER (WHERE state = 'queued')::int AS queued
      FROM jobs WHERE state IN ('queued','placed','booting','running') GROUP BY tenant
    )
    SELECT coalesce(t.name, c.tenant) AS name, t.max_concurrent, coalesce(c.active, 0) AS active, coalesce(c.queued, 0) AS queued
    FROM tenants t FULL OUTER JOIN counts c ON c.tenant = t.name
    WHERE t.max_concurrent IS NOT NULL OR c.tenant IS NOT NULL
    ORDER BY 1`.execute(db);
  return r.rows.map((x) => ({ name: x.name, maxConcurrent: x.max_concurrent, active: x.active, queued: x.queued }));
}

export async function setTenantLimit(db: Q, tenant: string, maxConcurrent: number | null): Promise<void> {
  await db
    .insertInto('tenants')
    .values({ name: tenant, max_concurrent: maxConcurrent })
    .onConflict((oc) => oc.column('name').doUpdateSet({ max_concurrent: maxConcurrent }))
    .execute();
}

