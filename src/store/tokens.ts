/** API and agent tokens: the secret is shown once and stored as a SHA-256 hash. */
import { createHash, randomBytes } from 'node:crypto';
import { sql } from 'kysely';
import type { Token, TokenRole } from '../core/host.ts';
import type { Db } from './store.ts';
import type { TokenRow } from './schema.ts';

const iso = (d: Date | null): string | null => (d ? new Date(d).toISOString() : null);

export function tokenFromRow(r: TokenRow): Token {
  return {
    id: r.id,
    name: r.name,
    role: r.role as TokenRole,
    tenant: r.tenant,
    createdAt: iso(r.created_at) ?? '',
    lastUsedAt: iso(r.last_used_at),
    revokedAt: iso(r.revoked_at),
  };
}

export function hashSecret(secret: string): string {
  return createHash('sha256').update(secret).digest('hex');
}

export function makeSecret(role: TokenRole): string {
  return `kiln_${role === 'agent' ? 'agt' : 'api'}_${randomBytes(24).toString('base64url')}`;
}

/** Creates a token; `secret` may be given (a bootstrap admin token from config), else one is generated. */
export async function createToken(
  db: Db,
  t: { name: string; role: TokenRole; tenant?: string; secret?: string },
): Promise<{ token: Token; secret: string }> {
  const secret = t.secret ?? makeSecret(t.role);
  const row = await db
    .insertInto('tokens')
    .values({ name: t.name, role: t.role, tenant: t.tenant ?? 'default', secret_hash: hashSecret(secret) })
    // The same secret again (KILN_ADMIN_TOKEN at every start) is the same token: a revoked one stays revoked.
    .onConflict((oc) => oc.column('secret_hash').doUpdateSet((eb) => ({ name: eb.ref('tokens.name') })))
    .returningAll()
    .executeTakeFirstOrThrow();
  return { token: tokenFromRow(row), secret };
}

export async function findTokenBySecret(db: Db, secret: string): Promise<Token | undefined> {
  const r = await db.selectFrom('tokens').selectAll().where('secret_hash', '=', hashSecret(secret)).where('revoked_at', 'is', null).executeTakeFirst();
  return r ? tokenFromRow(r) : undefined;
}

export async function listTokens(db: Db): Promise<Token[]> {
  return (await db.selectFrom('tokens').selectAll().orderBy('id').execute()).map(tokenFromRow);
}

export async function revokeToken(db: Db, id: number): Promise<Token | undefined> {
  const r = await db.updateTable('tokens').set({ revoked_at: sql`now()` }).where('id', '=', id).returningAll().executeTakeFirst();
  return r ? tokenFromRow(r) : undefined;
}

export async function countTokens(db: Db): Promise<number> {
  const r = await db.selectFrom('tokens').select(sql<number>`count(*)::int`.as('n')).executeTakeFirstOrThrow();
  return r.n;
}

/** Which of these token ids are revoked (or gone): their live agent connections are closed. */
export async function revokedTokenIds(db: Db, ids: number[]): Promise<number[]> {
  if (ids.length === 0) return [];
  const live = new Set((await db.selectFrom('tokens').select('id').where('id', 'in', ids).where('revoked_at', 'is', null).execute()).map((r) => r.id));
  return ids.filter((id) => !live.has(id));
}

/** Records that a token was used (the authenticator calls it at most once per cache period per token). */
export async function touchToken(db: Db, id: number): Promise<void> {
  await db.updateTable('tokens').set({ last_used_at: sql`now()` }).where('id', '=', id).execute();
}
