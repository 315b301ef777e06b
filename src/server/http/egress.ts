/**
 * Egress allowlists per tenant and per GitHub repository (docs/network.md): what guests of that tenant's
 * jobs, or of that repository's runner VMs, may reach beyond the internet. Admin only; delivered to the agent
 * with each launch (scheduler) and enforced by the host's nftables egress filter (src/vm/egress.ts).
 */
import { Type } from '@sinclair/typebox';
import { normaliseAllowList, type EgressScopeKind } from '../../core/egress-allow.ts';
import { listEgressPolicies, setEgressPolicy } from '../../store/egress-policies.ts';
import type { ApiDeps } from './deps.ts';
import type { RouteDef } from './routes.ts';

const Body = Type.Object({ allow: Type.Array(Type.String({ minLength: 1, maxLength: 300 }), { maxItems: 256 }) }, { additionalProperties: false });

export function egressRoutes(deps: ApiDeps): RouteDef[] {
  const db = deps.ctx.store.db;
  const set = (kind: EgressScopeKind, scope: string, allow: string[]) =>
    setEgressPolicy(db, kind, scope, normaliseAllowList(allow)).then(async () => (await listEgressPolicies(db)).find((p) => p.kind === kind && p.scope === (kind === 'repo' ? scope.toLowerCase() : scope)) ?? { kind, scope, allow: [] });
  return [
    {
      method: 'GET',
      url: '/v1/egress',
      tag: 'egress',
      summary: 'Egress allowlists set per tenant and per GitHub repository',
      permission: 'admin',
      schema: {},
      handler: async () => ({ policies: await listEgressPolicies(db) }),
    },
    {
      method: 'PUT',
      url: '/v1/egress/tenants/:name',
      tag: 'egress',
      summary: "Set a tenant's egress allowlist (CIDRs and host names its jobs' guests may reach though closed); an empty list removes it",
      permission: 'admin',
      schema: { params: Type.Object({ name: Type.String({ minLength: 1, maxLength: 100 }) }), body: Body },
      handler: async (req) => set('tenant', (req.params as { name: string }).name, (req.body as { allow: string[] }).allow),
    },
    {
      method: 'PUT',
      url: '/v1/egress/repos/:owner/:repo',
      tag: 'egress',
      summary: "Set a GitHub repository's egress allowlist (its runner VMs, on top of the GitHub tenant's); an empty list removes it",
      permission: 'admin',
      schema: {
        params: Type.Object({ owner: Type.String({ minLength: 1, maxLength: 100, pattern: '^[A-Za-z0-9_.-]+$' }), repo: Type.String({ minLength: 1, maxLength: 100, pattern: '^[A-Za-z0-9_.-]+$' }) }),
        body: Body,
      },
      handler: async (req) => {
        const p = req.params as { owner: string; repo: string };
        return set('repo', `${p.owner}/${p.repo}`, (req.body as { allow: string[] }).allow);
      },
    },
  ];
}
