/**
 * Who may do what. API tokens carry a role; agent tokens may only open the agent connection.
 * Lookups are cached briefly so a burst of requests does not hash-and-query per request forever.
 */
import { KilnError } from '../../core/errors.ts';
import type { Token, TokenRole } from '../../core/host.ts';
import { findTokenBySecret, touchToken } from '../../store/tokens.ts';
import type { Db } from '../../store/store.ts';

/**
 * `cache-write`: a job submitted with this token may write its warm cache back (docs/caches.md). Kept apart
 * from `submit` so that a role that only submits (a CI bot's) can be given caches to read, never to change.
 */
export type Permission = 'read' | 'submit' | 'operate' | 'admin' | 'agent' | 'cache-write';

const GRANTS: Record<TokenRole, readonly Permission[]> = {
  admin: ['read', 'submit', 'operate', 'admin', 'cache-write'],
  operator: ['read', 'submit', 'operate', 'cache-write'],
  'read-only': ['read'],
  /** The dashboard's role for people watching the fleet: reads everything an operator sees, changes nothing. */
  viewer: ['read'],
  agent: ['agent'],
};

export function allows(role: TokenRole, p: Permission): boolean {
  return GRANTS[role].includes(p);
}

export interface Authenticator {
  authenticate(header: string | undefined, need: Permission): Promise<Token>;
  forget(): void;
}

export function makeAuthenticator(db: Db, cacheMs = 5_000): Authenticator {
  const cache = new Map<string, { token: Token | undefined; at: number }>();
  return {
    forget: () => cache.clear(),
    async authenticate(header, need) {
      const m = header ? /^Bearer\s+(\S+)$/i.exec(header) : null;
      if (!m?.[1]) {
        throw new KilnError('auth.missing', 'this request needs a token', { hint: 'pass `Authorization: Bearer <token>` (the CLI reads KILN_TOKEN)' });
      }
      const secret = m[1];
      const now = Date.now();
      let hit = cache.get(secret);
      if (!hit || now - hit.at > cacheMs) {
        hit = { token: await findTokenBySecret(db, secret), at: now };
        // lastUsedAt, at most once per cache period per token (not a write per request).
        if (hit.token) touchToken(db, hit.token.id).catch(() => undefined);
        if (cache.size > 10_000) cache.clear();
        cache.set(secret, hit);
      }
      const token = hit.token;
      if (!token) throw new KilnError('auth.invalid', 'the token is unknown or revoked', { hint: 'create a new one with `kiln tokens create`' });
      if (!allows(token.role, need)) {
        throw new KilnError('auth.forbidden', `a ${token.role} token may not do this (needs ${need})`, {
          hint: need === 'agent' ? 'agents need a token made with `kiln tokens create --role agent`' : 'use a token with a stronger role',
        });
      }
      return token;
    },
  };
}

/** The tenant a token's reads and writes are confined to; undefined for admins (every tenant). */
export function tenantScope(token: Pick<Token, 'role' | 'tenant'> | undefined): string | undefined {
  return !token || token.role === 'admin' ? undefined : token.tenant;
}

/** Whether a token may see or act on a tenant's records (jobs, logs, GitHub records, usage). */
export function mayAccessTenant(token: Pick<Token, 'role' | 'tenant'> | undefined, tenant: string): boolean {
  const scope = tenantScope(token);
  return scope === undefined || scope === tenant;
}
