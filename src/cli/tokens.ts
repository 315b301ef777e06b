/** `kiln tokens create|ls|revoke`. */
import type { Command } from 'commander';
import { KilnError } from '../core/errors.ts';
import { API } from '../core/http-contract.ts';
import { TOKEN_ROLES, type TokenRole } from '../core/host.ts';
import { addClientOptions, clientFrom, type ClientFlags } from './fleet-client.ts';
import { table, type Output } from './output.ts';

const isRole = (r: string): r is TokenRole => (TOKEN_ROLES as readonly string[]).includes(r);

export function registerTokens(program: Command, out: () => Output): void {
  const tokens = program.command('tokens').description('API and agent tokens (admin)');
  addClientOptions(tokens.command('create').description('create a token; the secret is printed once (stdout) and stored hashed'))
    .option('--role <role>', `one of ${TOKEN_ROLES.join(', ')}`, 'operator')
    .option('--name <name>', 'what the token is for', 'cli')
    .option('--tenant <tenant>', 'tenant its jobs count against (default: default)')
    .action(async (f: ClientFlags & { role: string; name: string; tenant?: string }) => {
      if (!isRole(f.role)) {
        throw new KilnError('input.bad_role', `unknown role "${f.role}"`, { hint: `use one of ${TOKEN_ROLES.join(', ')}` });
      }
      const r = await clientFrom(f).call(API.createToken, { body: { name: f.name, role: f.role, ...(f.tenant ? { tenant: f.tenant } : {}) } });
      out().info(`created ${r.token.role} token ${r.token.id} (${r.token.name}); it is shown only now:`);
      out().data(r.secret);
    });
  addClientOptions(tokens.command('ls').description('list tokens (never their secrets)')).action(async (f: ClientFlags) => {
    const { tokens: list } = await clientFrom(f).call(API.listTokens, {});
    out().data(table([['ID', 'NAME', 'ROLE', 'TENANT', 'CREATED', 'REVOKED'], ...list.map((t) => [String(t.id), t.name, t.role, t.tenant, t.createdAt, t.revokedAt ?? '-'])]));
  });
  addClientOptions(tokens.command('revoke <id>').description('revoke a token')).action(async (id: string, f: ClientFlags) => {
    await clientFrom(f).call(API.revokeToken, { params: { id } });
    out().info(`revoked token ${id}`);
  });
}
