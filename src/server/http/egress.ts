/**
 * Egress allowlists per tenant and per GitHub repository (docs/network.md): what guests of that tenant's
 * jobs, or of that repository's runner VMs, may reach beyond the internet. Admin only; delivered to the agent
 * with each launch (scheduler) and enforced by the host's nftables egress filter (src/vm/egress.ts).
 */
import { normaliseAllowList, type EgressScopeKind } from '../../core/egress-allow.ts';
import { API } from '../../core/http-contract.ts';
import { listEgressPolicies, setEgressPolicy } from '../../store/egress-policies.ts';
import type { ApiDeps } from './deps.ts';
import { defineRoute, type RouteDef } from './routes.ts';

export function egressRoutes(deps: ApiDeps): RouteDef[] {
  const db = deps.ctx.store.db;
  const set = (kind: EgressScopeKind, scope: string, allow: string[]) =>
    setEgressPolicy(db, kind, scope, normaliseAllowList(allow)).then(async () => (await listEgressPolicies(db)).find((p) => p.kind === kind && p.scope === (kind === 'repo' ? scope.toLowerCase() : scope)) ?? { kind, scope, allow: [] });
  return [
    defineRoute(API.egressPolicies, { tag: 'egress', summary: 'Egress allowlists set per tenant and per GitHub repository', permission: 'admin' }, async () => ({
      policies: await listEgressPolicies(db),
    })),
    defineRoute(
      API.setTenantEgress,
      {
        tag: 'egress',
        summary: "Set a tenant's egress allowlist (CIDRs and host names its jobs' guests may reach though closed); an empty list removes it",
        permission: 'admin',
      },
      async (req) => set('tenant', req.params.name, req.body.allow),
    ),
    defineRoute(
      API.setRepoEgress,
      { tag: 'egress', summary: "Set a GitHub repository's egress allowlist (its runner VMs, on top of the GitHub tenant's); an empty list removes it", permission: 'admin' },
      async (req) => set('repo', `${req.params.owner}/${req.params.repo}`, req.body.allow),
    ),
  ];
}
