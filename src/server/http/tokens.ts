/** Tokens API (admin only) and tenant limits. */
import { Type } from '@sinclair/typebox';
import { KilnError } from '../../core/errors.ts';
import { TOKEN_ROLES, type TokenRole } from '../../core/host.ts';
import { listTenants, setTenantLimit } from '../../store/tenants.ts';
import { createToken, listTokens, revokeToken } from '../../store/tokens.ts';
import type { ApiDeps } from './deps.ts';
import type { RouteDef } from './routes.ts';
import { tenantScope } from './auth.ts';

export function tokenRoutes(deps: ApiDeps): RouteDef[] {
  const db = deps.ctx.store.db;
  return [
    {
      method: 'POST',
      url: '/v1/tokens',
      tag: 'tokens',
      summary: 'Create a token; the secret is in this answer only and is stored hashed',
      permission: 'admin',
      schema: {
        body: Type.Object(
          {
            name: Type.String({ minLength: 1, maxLength: 100 }),
            role: Type.Union(TOKEN_ROLES.map((r) => Type.Literal(r))),
            tenant: Type.Optional(Type.String({ minLength: 1, maxLength: 100, pattern: '^[A-Za-z0-9._-]+$' })),
          },
          { additionalProperties: false },
        ),
      },
      async handler(req, reply) {
        const b = req.body as { name: string; role: TokenRole; tenant?: string };
        const { token, secret } = await createToken(db, { name: b.name, role: b.role, ...(b.tenant ? { tenant: b.tenant } : {}) });
        return reply.code(201).send({ token, secret });
      },
    },
    {
      method: 'GET',
      url: '/v1/tokens',
      tag: 'tokens',
      summary: 'List tokens (never their secrets)',
      permission: 'admin',
      schema: {},
      handler: async () => ({ tokens: await listTokens(db) }),
    },
    {
      method: 'DELETE',
      url: '/v1/tokens/:id',
      tag: 'tokens',
      summary: 'Revoke a token',
      permission: 'admin',
      schema: { params: Type.Object({ id: Type.Integer({ minimum: 1 }) }) },
      async handler(req) {
        const t = await revokeToken(db, (req.params as { id: number }).id);
        if (!t) throw new KilnError('token.not_found', 'no such token');
        deps.ctx.auth.forget();
        deps.closeToken(t.id);
        return t;
      },
    },
    {
      method: 'GET',
      url: '/v1/tenants',
      tag: 'tenants',
      summary: 'Tenants with a concurrency limit or work: the limit, jobs active (placed, booting, running) and queued',
      permission: 'read',
      schema: {
        response: Type.Object({
          tenants: Type.Array(Type.Object({ name: Type.String(), maxConcurrent: Type.Union([Type.Integer(), Type.Null()]), active: Type.Integer(), queued: Type.Integer() })),
        }),
      },
      async handler(_req, _reply, token) {
        const scope = tenantScope(token);
        const all = await listTenants(db);
        return { tenants: scope === undefined ? all : all.filter((t) => t.name === scope) };
      },
    },
    {
      method: 'PUT',
      url: '/v1/tenants/:name',
      tag: 'tenants',
      summary: "Set a tenant's concurrency limit (null: unlimited)",
      permission: 'admin',
      schema: {
        params: Type.Object({ name: Type.String({ minLength: 1, maxLength: 100, pattern: '^[A-Za-z0-9._-]+$' }) }),
        body: Type.Object({ maxConcurrent: Type.Union([Type.Null(), Type.Integer({ minimum: 0, maximum: 1_000_000 })]) }, { additionalProperties: false }),
      },
      async handler(req) {
        const name = (req.params as { name: string }).name;
        const { maxConcurrent } = req.body as { maxConcurrent: number | null };
        await setTenantLimit(db, name, maxConcurrent);
        deps.scheduler.limitsChanged();
        deps.scheduler.kick();
        return { name, maxConcurrent };
      },
    },
  ];
}
