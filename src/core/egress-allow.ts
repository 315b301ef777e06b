/**
 * Guest egress allowlists (docs/network.md): what a VM with a network may reach beyond the internet, though
 * the filter closes it (the host, private ranges). The entries' grammar, and which allowlists a job gets:
 * its tenant's and, for a GitHub runner VM, its repository's, set by an operator in the server
 * (`kiln egress set`), on top of the host's own (KILN_EGRESS_ALLOW on the agent). Pure.
 */
import { isIP } from 'node:net';
import { KilnError } from './errors.ts';

export type AllowEntry = { kind: 'cidr'; family: 4 | 6; cidr: string } | { kind: 'name'; name: string };

/** Parses one allowlist entry; a bad one is the user's error, with the forms that work. */
export function parseAllowEntry(entry: string): AllowEntry {
  const e = entry.trim();
  const [addr, prefix, ...rest] = e.split('/');
  const family = addr ? isIP(addr) : 0;
  if (family === 4 || family === 6) {
    const max = family === 4 ? 32 : 128;
    if (rest.length === 0 && (prefix === undefined || (/^[0-9]{1,3}$/.test(prefix) && Number(prefix) <= max))) {
      return { kind: 'cidr', family, cidr: prefix === undefined ? `${addr}/${max}` : `${addr}/${Number(prefix)}` };
    }
  } else if (prefix === undefined && /^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/.test(e) && !/^[0-9.]+$/.test(e)) {
    return { kind: 'name', name: e.toLowerCase() };
  }
  throw new KilnError('input.bad_egress_allow', `egress allowlist entry "${entry}" is neither an address, a CIDR nor a host name`, {
    hint: 'write e.g. 203.0.113.7, 198.51.100.0/24, 2001:db8::/48 or api.github.com',
  });
}

/** The most entries one allowlist (a tenant's, a repository's) may hold. */
export const MAX_ALLOW_ENTRIES = 256;

/** Checks and normalises an allowlist an operator sets: every entry parsed, duplicates dropped, order kept. */
export function normaliseAllowList(entries: readonly string[]): string[] {
  if (entries.length > MAX_ALLOW_ENTRIES) throw new KilnError('input.bad_egress_allow', `an allowlist holds at most ${MAX_ALLOW_ENTRIES} entries, not ${entries.length}`);
  const out: string[] = [];
  for (const e of entries) {
    const a = parseAllowEntry(e);
    const text = a.kind === 'cidr' ? a.cidr : a.name;
    if (!out.includes(text)) out.push(text);
  }
  return out;
}

export type EgressScopeKind = 'tenant' | 'repo';

/** The allowlists set in the server, by tenant and by GitHub repository (`owner/name`, any case). */
export interface EgressPolicies {
  tenants: ReadonlyMap<string, readonly string[]>;
  repos: ReadonlyMap<string, readonly string[]>;
}

export const scopeKey = (kind: EgressScopeKind, scope: string): string => (kind === 'repo' ? scope.toLowerCase() : scope);

/**
 * What a job's VM may reach beyond the internet: its tenant's allowlist, then its repository's (GitHub
 * runner VMs), without duplicates. Jobs without a network get nothing (they reach nothing anyway).
 */
export function egressAllowFor(p: EgressPolicies, job: { tenant: string; repo: string | null; network: 'none' | 'user' }): string[] {
  if (job.network !== 'user') return [];
  const out: string[] = [];
  for (const list of [p.tenants.get(job.tenant), job.repo ? p.repos.get(scopeKey('repo', job.repo)) : undefined]) {
    for (const e of list ?? []) if (!out.includes(e)) out.push(e);
  }
  return out;
}
