/** Egress allowlists per tenant and per GitHub repository (migration 0012; core/egress-allow.ts resolves them). */
import { sql } from 'kysely';
import { scopeKey, type EgressPolicies, type EgressScopeKind } from '../core/egress-allow.ts';
import type { Db, Tx } from './store.ts';

type Q = Db | Tx;

export interface EgressPolicyEntry {
  kind: EgressScopeKind;
  scope: string;
  allow: string[];
  updatedAt: string;
}

/** Sets a scope's allowlist (already normalised); an empty list removes it. */
export async function setEgressPolicy(db: Q, kind: EgressScopeKind, scope: string, allow: string[]): Promise<void> {
  const key = scopeKey(kind, scope);
  if (allow.length === 0) {
    await db.deleteFrom('egress_policies').where('kind', '=', kind).where('scope', '=', key).execute();
    return;
  }
  await db
    .insertInto('egress_policies')
    .values({ kind, scope: key, allow: JSON.stringify(allow) })
    .onConflict((oc) => oc.columns(['kind', 'scope']).doUpdateSet({ allow: JSON.stringify(allow), updated_at: sql`now()` }))
    .execute();
}

export async function listEgressPolicies(db: Q): Promise<EgressPolicyEntry[]> {
  const rows = await db.selectFrom('egress_policies').selectAll().orderBy('kind').orderBy('scope').execute();
  return rows.map((r) => ({ kind: r.kind as EgressScopeKind, scope: r.scope, allow: r.allow, updatedAt: r.updated_at.toISOString() }));
}

export async function loadEgressPolicies(db: Q): Promise<EgressPolicies> {
  const tenants = new Map<string, string[]>();
  const repos = new Map<string, string[]>();
  for (const p of await listEgressPolicies(db)) (p.kind === 'tenant' ? tenants : repos).set(p.scope, p.allow);
  return { tenants, repos };
}
