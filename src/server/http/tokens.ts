/** Tokens API (admin only) and tenant limits. */
import { KilnError } from '../../core/errors.ts';
import { API } from '../../core/http-contract.ts';
import { listTenants, setTenantLimit } from '../../store/tenants.ts';
import { createToken, listTokens, revokeToken } from '../../store/tokens.ts';
import type { ApiDeps } from './deps.ts';
import { defineRoute, type RouteDef } from './routes.ts';
import { tenantScope } from './auth.ts';

export function tokenRoutes(deps: ApiDeps): RouteDef[] {
  const db = deps.ctx.store.db;
  return [
    defineRoute(API.createToken, { tag: 'tokens', summary: 'Create a token; the secret is in this answer only and is stored hashed', permission: 'admin' }, async (req, reply) => {
      const b = req.body;
      const { token, secret } = await createToken(db, { name: b.name, role: b.role, ...(b.tenant ? { tenant: b.tenant } : {}) });
      return reply.code(201).send({ token, secret });
    }),
    defineRoute(API.listTokens, { tag: 'tokens', summary: 'List tokens (never their secrets)', permission: 'admin' }, async () => ({ tokens: await listTokens(db) })),
    defineRoute(API.revokeToken, { tag: 'tokens', summary: 'Revoke a token', permission: 'admin' }, async (req) => {
      const t = await revokeToken(db, req.params.id);
      if (!t) throw new KilnError('token.not_found', 'no such token');
      deps.ctx.auth.forget();
      deps.closeToken(t.id);
      return t;
    }),
    defineRoute(
      API.listTenants,
      { tag: 'tenants', summary: 'Tenants with a concurrency limit or work: the limit, jobs active (placed, booting, running) and queued', permission: 'read' },
      async (_req, _reply, token) => {
        const scope = tenantScope(token);
        const all = await listTenants(db);
        return { tenants: scope === undefined ? all : all.filter((t) => t.name === scope) };
      },
    ),
    defineRoute(API.setTenantLimit, { tag: 'tenants', summary: "Set a tenant's concurrency limit (null: unlimited)", permission: 'admin' }, async (req) => {
      const name = req.params.name;
      const { maxConcurrent } = req.body;
      await setTenantLimit(db, name, maxConcurrent);
      deps.scheduler.limitsChanged();
      deps.scheduler.kick();
      return { name, maxConcurrent };
    }),
  ];
}
