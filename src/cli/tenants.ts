/** `kiln tenants ls|limit`: per-tenant concurrency limits, and what each tenant runs and waits for. */
import type { Command } from 'commander';
import { KilnError } from '../core/errors.ts';
import { API } from '../core/http-contract.ts';
import { addClientOptions, clientFrom, type ClientFlags } from './fleet-client.ts';
import { table, type Output } from './output.ts';

export function parseLimit(text: string): number | null {
  if (text === 'none' || text === 'unlimited') return null;
  if (!/^\d+$/.test(text)) throw new KilnError('input.bad_limit', `"${text}" is not a job count`, { hint: 'give a whole number of concurrent jobs, or "none" to remove the limit' });
  return Number(text);
}

export function registerTenants(program: Command, out: () => Output): void {
  const tenants = program.command('tenants').description('per-tenant concurrency limits (a tenant is what a token\'s jobs count against)');
  addClientOptions(tenants.command('ls').description('tenants with a limit or with jobs queued or active'))
    .option('--json', 'print JSON')
    .action(async (f: ClientFlags & { json?: boolean }) => {
      const { tenants: list } = await clientFrom(f).call(API.listTenants, {});
      if (f.json) return out().data(JSON.stringify(list, null, 2));
      out().data(table([['TENANT', 'LIMIT', 'ACTIVE', 'QUEUED'], ...list.map((t) => [t.name, t.maxConcurrent === null ? '-' : String(t.maxConcurrent), String(t.active), String(t.queued)])]));
    });
  addClientOptions(tenants.command('limit <tenant> <jobs>').description('at most <jobs> of the tenant\'s jobs placed or running at once ("none": unlimited; admin)')).action(
    async (name: string, jobs: string, f: ClientFlags) => {
      const maxConcurrent = parseLimit(jobs);
      await clientFrom(f).call(API.setTenantLimit, { params: { name }, body: { maxConcurrent } });
      out().info(maxConcurrent === null ? `tenant ${name}: no limit` : `tenant ${name}: at most ${maxConcurrent} job(s) at once`);
    },
  );
}
