/** `kiln egress ls|set`: guest egress allowlists per tenant and per GitHub repository (docs/network.md). */
import type { Command } from 'commander';
import { KilnError } from '../core/errors.ts';
import { API } from '../core/http-contract.ts';
import { addClientOptions, clientFrom, type ClientFlags } from './fleet-client.ts';
import { table, type Output } from './output.ts';

export function registerEgress(program: Command, out: () => Output): void {
  const egress = program.command('egress').description("what guests may reach beyond the internet, per tenant and per GitHub repository (admin)");
  addClientOptions(egress.command('ls').description('the allowlists set'))
    .option('--json', 'print JSON')
    .action(async (f: ClientFlags & { json?: boolean }) => {
      const { policies } = await clientFrom(f).call(API.egressPolicies, {});
      if (f.json) return out().data(JSON.stringify(policies, null, 2));
      out().data(table([['KIND', 'SCOPE', 'ALLOW'], ...policies.map((p) => [p.kind, p.scope, p.allow.join(',')])]));
    });
  addClientOptions(
    egress
      .command('set [entries...]')
      .description('set the allowlist of a tenant (--tenant) or a GitHub repository (--repo OWNER/NAME): CIDRs and host names; none removes it')
      .option('--tenant <name>', 'the tenant whose jobs get it')
      .option('--repo <owner/name>', 'the GitHub repository whose runner VMs get it'),
  ).action(async (entries: string[], f: ClientFlags & { tenant?: string; repo?: string }) => {
    if ((f.tenant === undefined) === (f.repo === undefined)) throw new KilnError('input.bad_scope', 'name exactly one of --tenant or --repo', { hint: 'e.g. kiln egress set --tenant ci 10.0.5.0/24 pkg.internal' });
    const allow = entries.flatMap((e) => e.split(',')).map((e) => e.trim()).filter(Boolean);
    const client = clientFrom(f);
    let p;
    if (f.tenant !== undefined) p = await client.call(API.setTenantEgress, { params: { name: f.tenant }, body: { allow } });
    else {
      const m = /^([A-Za-z0-9_.-]+)\/([A-Za-z0-9_.-]+)$/.exec(f.repo!);
      if (!m) throw new KilnError('input.bad_scope', `"${f.repo}" is not OWNER/NAME`);
      p = await client.call(API.setRepoEgress, { params: { owner: m[1]!, repo: m[2]! }, body: { allow } });
    }
    out().info(p.allow.length === 0 ? `${p.kind} ${p.scope}: no allowlist` : `${p.kind} ${p.scope}: ${p.allow.join(', ')}`);
  });
}
