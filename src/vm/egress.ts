/**
 * Guest egress filter (see docs/network.md). A guest with `network: user` talks to the world through QEMU's
 * user networking (slirp), whose outbound connections are ordinary sockets of the QEMU process. Each VM's
 * QEMU runs in its own cgroup, so one nftables rule on the host's output hook (`socket cgroupv2`) sends every
 * packet of that VM's sockets to the VM's own chain, which
 *   1. accepts what the allowlist opens (CIDRs, and names resolved when the VM starts),
 *   2. accepts DNS (port 53) to the host's resolvers, which slirp's 10.0.2.3 forwards to,
 *   3. closes the host itself (any local address: loopback, so also 10.0.2.2, and every interface's) except
 *      to the VM's own QEMU (below),
 *   4. rejects the host's directly attached networks, private, shared, link-local (169.254.0.0/16: cloud
 *      metadata), multicast and reserved ranges, for IPv4 and IPv6,
 *   5. accepts the rest (the internet).
 * Rejecting (not dropping) makes a refused connection fail at once in the guest.
 *
 * The VM's own QEMU: for each guest connection to a forward (guestfwd's `cmd:` form, src/vm/forwards.ts)
 * libslirp makes a TCP socket pair on the host's loopback (it listens on 127.0.0.1:<ephemeral> and connects to
 * itself) before it starts the command. Those sockets are the VM's, so a blanket reject of local addresses
 * refused that connect (EHOSTUNREACH) and closed every forwarded connection at once. The output hook cannot
 * tell whose socket listens at a local destination, so it marks the VM's packets to local addresses (the
 * mark is 0x6b plus the low 24 bits of the VM's cgroup id: see cgroupMark) and passes them on; the input hook, where the
 * kernel looks up the receiving socket, accepts a marked packet only if that socket is in the same VM's
 * cgroup (or the connection is already established, which only such a packet can have started), and rejects
 * the rest. Slirp's own socket pairs work; 10.0.2.2 and every host service stay closed. (Without the
 * established rule the handshake's last ACK, which reaches a request socket that has no cgroup to match, was
 * rejected, and QEMU's main loop hung in accept().)
 */
import { spawnSync } from 'node:child_process';
import { statSync } from 'node:fs';
import { lookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import { relative } from 'node:path';
import { KilnError } from '../core/errors.ts';

/** The nftables table every kiln on this host shares; one chain per VM. */
export const EGRESS_TABLE = 'kiln_egress';

/** Destinations closed to guests unless an allowlist entry opens them. */
export const CLOSED_V4 = [
  '0.0.0.0/8',
  '10.0.0.0/8',
  '100.64.0.0/10',
  '127.0.0.0/8',
  '169.254.0.0/16',
  '172.16.0.0/12',
  '192.0.0.0/24',
  '192.0.2.0/24',
  '192.168.0.0/16',
  '198.18.0.0/15',
  '198.51.100.0/24',
  '203.0.113.0/24',
  '224.0.0.0/3',
];
export const CLOSED_V6 = ['::/127', '::ffff:0:0/96', '64:ff9b::/96', '100::/64', '2001:db8::/32', 'fc00::/7', 'fe80::/10', 'ff00::/8'];

export interface EgressPolicy {
  /** CIDRs (`203.0.113.7`, `198.51.100.0/24`, `2001:db8::/48`) and host names (`api.github.com`) the guest may reach even if closed. */
  allow: string[];
}

export { parseAllowEntry, type AllowEntry } from '../core/egress-allow.ts';
import { parseAllowEntry as parseEntry, type AllowEntry } from '../core/egress-allow.ts';

export interface EgressRuleInput {
  /** nftables chain of this VM. */
  chain: string;
  /** The VM's cgroup v2 directory, relative to /sys/fs/cgroup, and its depth in the v2 hierarchy. */
  cgroupPath: string;
  cgroupLevel: number;
  /** The packet mark of this VM's packets to local addresses (its cgroup id, low 32 bits; never 0). */
  mark: number;
  allow4: string[];
  allow6: string[];
  resolvers4: string[];
  resolvers6: string[];
  /** The host's directly attached networks (closed like private ranges, even when public). */
  hostNets4: string[];
  hostNets6: string[];
}

const set = (items: string[]) => `{ ${items.join(', ')} }`;

/** The nft script that adds one VM's chain and its dispatch rule (pure; applied with `nft -f -`). */
export function egressScript(r: EgressRuleInput): string {
  const c = `inet ${EGRESS_TABLE} ${r.chain}`;
  const lines = [
    `add table inet ${EGRESS_TABLE}`,
    `add chain inet ${EGRESS_TABLE} output { type filter hook output priority filter; policy accept; }`,
    `add chain inet ${EGRESS_TABLE} input { type filter hook input priority filter; policy accept; }`,
    `add chain ${c}`,
  ];
  const mark = `0x${r.mark.toString(16).padStart(8, '0')}`;
  const cgroup = `socket cgroupv2 level ${r.cgroupLevel} "${r.cgroupPath}"`;
  if (r.allow4.length > 0) lines.push(`add rule ${c} ip daddr ${set(r.allow4)} accept`);
  if (r.allow6.length > 0) lines.push(`add rule ${c} ip6 daddr ${set(r.allow6)} accept`);
  for (const proto of ['udp', 'tcp']) {
    if (r.resolvers4.length > 0) lines.push(`add rule ${c} ip daddr ${set(r.resolvers4)} ${proto} dport 53 accept`);
    if (r.resolvers6.length > 0) lines.push(`add rule ${c} ip6 daddr ${set(r.resolvers6)} ${proto} dport 53 accept`);
  }
  // Local destinations: marked here, decided on input (the VM's own QEMU only; see the top of this file).
  lines.push(`add rule ${c} fib daddr type local meta mark set ${mark} accept`);
  lines.push(`add rule ${c} ip daddr ${set([...CLOSED_V4, ...r.hostNets4])} reject with icmpx type admin-prohibited`);
  lines.push(`add rule ${c} ip6 daddr ${set([...CLOSED_V6, ...r.hostNets6])} reject with icmpx type admin-prohibited`);
  // A connection the input hook let start is let go on (its handshake's last ACK reaches a request socket,
  // which has no cgroup to match); then the receiving socket decides.
  lines.push(`add rule inet ${EGRESS_TABLE} input meta mark ${mark} ct state established,related accept comment "${r.chain}"`);
  lines.push(`add rule inet ${EGRESS_TABLE} input meta mark ${mark} ${cgroup} accept comment "${r.chain}"`);
  // A TCP reset, not an ICMP error: slirp's non-blocking connect is still inside the connect call when the
  // refusal comes back over the loopback, and the kernel takes an ICMP error then as a soft error (the SYN is
  // retried, the guest waits); a reset fails the connect, and slirp resets the guest's connection at once.
  lines.push(`add rule inet ${EGRESS_TABLE} input meta mark ${mark} meta l4proto tcp reject with tcp reset comment "${r.chain}"`);
  lines.push(`add rule inet ${EGRESS_TABLE} input meta mark ${mark} reject with icmpx type admin-prohibited comment "${r.chain}"`);
  lines.push(`add rule inet ${EGRESS_TABLE} output ${cgroup} jump ${r.chain}`);
  return lines.join('\n') + '\n';
}

/** The nameservers slirp forwards the guest's DNS to (from resolv.conf text). */
export function resolversFrom(resolvConf: string): { v4: string[]; v6: string[] } {
  const out = { v4: [] as string[], v6: [] as string[] };
  for (const line of resolvConf.split('\n')) {
    const m = /^\s*nameserver\s+(\S+)/.exec(line);
    const ip = m?.[1]?.split('%')[0];
    if (!ip) continue;
    if (isIP(ip) === 4) out.v4.push(ip);
    else if (isIP(ip) === 6) out.v6.push(ip);
  }
  return out;
}

/** The host's directly attached networks from `ip -j route` output (scope link routes with a prefix). */
export function hostNetworksFrom(ipRouteJson: string): string[] {
  try {
    const routes = JSON.parse(ipRouteJson) as { dst?: string; scope?: string; type?: string }[];
    return routes
      .filter((r) => r.scope === 'link' && r.dst && r.dst !== 'default' && (r.type === undefined || r.type === 'unicast'))
      .map((r) => r.dst!)
      .filter((d) => isIP(d.split('/')[0]!) !== 0);
  } catch {
    return [];
  }
}

/** A chain name per VM name (`<id>.<tag>`), reversible so a sweep can tell which VM a chain belongs to. */
export function chainFor(vmName: string): string {
  return `vm_${Buffer.from(vmName).toString('hex')}`;
}

export function vmNameOfChain(chain: string): string | undefined {
  return chain.startsWith('vm_') ? Buffer.from(chain.slice(3), 'hex').toString() : undefined;
}

function nft(args: string[], input?: string): { ok: boolean; out: string; err: string } {
  const r = spawnSync('nft', args, { encoding: 'utf8', ...(input !== undefined ? { input } : {}) });
  return { ok: r.status === 0, out: r.stdout ?? '', err: (r.stderr ?? '') + (r.error ? String(r.error) : '') };
}

function run(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  return r.status === 0 ? r.stdout : '';
}

/** Why this host cannot filter guest egress, or undefined if it can. */
export function egressProblem(v2Root: string | undefined, mounts: string): string | undefined {
  if (process.getuid?.() !== 0) return 'kiln is not running as root (the filter is an nftables rule)';
  if (!v2Root) return 'the cgroup v2 hierarchy is not mounted (the filter matches each VM by its v2 cgroup)';
  if (relative('/sys/fs/cgroup', v2Root).startsWith('..')) return `the cgroup v2 hierarchy is mounted at ${v2Root}, outside /sys/fs/cgroup, where nft looks`;
  // A configured net_cls or net_prio v1 controller makes the kernel stop tracking sockets' v2 cgroups.
  if (/ cgroup \S*\b(net_cls|net_prio)\b/.test(mounts)) return 'the net_cls/net_prio cgroup v1 controllers are mounted, which turns off the v2 socket match';
  const v = nft(['--version']);
  if (!v.ok) return '`nft` is not installed (Debian package nftables)';
  return undefined;
}

/** Resolves the allowlist's names now (a name's later changes of address are not followed). */
export async function resolveAllow(entries: AllowEntry[]): Promise<{ v4: string[]; v6: string[] }> {
  const out = { v4: [] as string[], v6: [] as string[] };
  for (const e of entries) {
    if (e.kind === 'cidr') (e.family === 4 ? out.v4 : out.v6).push(e.cidr);
    else {
      let addrs: { address: string; family: number }[];
      try {
        addrs = await lookup(e.name, { all: true });
      } catch (err) {
        throw new KilnError('vm.egress_name_unresolved', `egress allowlist name "${e.name}" does not resolve on this host`, {
          cause: err,
          hint: 'check the name, or list its addresses as CIDRs instead',
        });
      }
      for (const a of addrs) (a.family === 4 ? out.v4 : out.v6).push(a.address);
    }
  }
  return { v4: [...new Set(out.v4)], v6: [...new Set(out.v6)] };
}

/** The top byte of every egress mark ('k'), so kiln's marks stay apart from the small values and single bits other host software uses. */
export const EGRESS_MARK_TAG = 0x6b000000;

/**
 * The mark of a VM's packets to local addresses: EGRESS_MARK_TAG plus the low 24 bits of its cgroup's id (the
 * directory's inode number). The kernel hands out these ids in increasing order across the whole v2
 * hierarchy (cgroups and their files), so two VMs alive at once share a mark only if 2^24 ids were handed out
 * between their starts; the mark's only use is to find the VM's own input rules again.
 */
export function cgroupMark(cgroupDir: string): number {
  return EGRESS_MARK_TAG | Number(statSync(cgroupDir, { bigint: true }).ino & 0xffffffn);
}

/** Installs one VM's chain; the VM's QEMU must be started in `cgroupDir` (a v2 cgroup). */
export async function applyEgress(vmName: string, cgroupDir: string, v2Root: string, policy: EgressPolicy, resolvConf: string): Promise<void> {
  const allow = await resolveAllow(policy.allow.map(parseEntry));
  const resolvers = resolversFrom(resolvConf);
  const nets = [...hostNetworksFrom(run('ip', ['-j', '-4', 'route', 'show', 'table', 'all'])), ...hostNetworksFrom(run('ip', ['-j', '-6', 'route', 'show', 'table', 'all']))];
  const script = egressScript({
    chain: chainFor(vmName),
    cgroupPath: relative('/sys/fs/cgroup', cgroupDir),
    cgroupLevel: relative(v2Root, cgroupDir).split('/').length,
    mark: cgroupMark(cgroupDir),
    allow4: allow.v4,
    allow6: allow.v6,
    resolvers4: resolvers.v4,
    resolvers6: resolvers.v6,
    hostNets4: nets.filter((n) => isIP(n.split('/')[0]!) === 4),
    hostNets6: nets.filter((n) => isIP(n.split('/')[0]!) === 6 && !n.startsWith('fe80:')),
  });
  const r = nft(['-f', '-'], script);
  if (!r.ok) {
    removeEgress(vmName);
    throw new KilnError('vm.egress_failed', `the guest egress filter could not be installed: ${r.err.trim().split('\n').slice(0, 3).join(' ')}`, {
      hint: 'check that nftables works on this host (`nft list ruleset`)',
    });
  }
}

interface NftJson {
  nftables: { rule?: { chain: string; handle: number; comment?: string; expr?: { jump?: { target: string } }[] }; chain?: { name: string } }[];
}

function listTable(): NftJson['nftables'] {
  const r = nft(['-j', 'list', 'table', 'inet', EGRESS_TABLE]);
  if (!r.ok) return [];
  try {
    return (JSON.parse(r.out) as NftJson).nftables;
  } catch {
    return [];
  }
}

/** Removes one VM's dispatch rule, input rules and chain; nothing if they are gone. */
export function removeEgress(vmName: string, items = listTable()): void {
  const chain = chainFor(vmName);
  const script: string[] = [];
  for (const i of items) {
    if (i.rule?.chain === 'output' && i.rule.expr?.some((x) => x.jump?.target === chain)) script.push(`delete rule inet ${EGRESS_TABLE} output handle ${i.rule.handle}`);
    if (i.rule?.chain === 'input' && i.rule.comment === chain) script.push(`delete rule inet ${EGRESS_TABLE} input handle ${i.rule.handle}`);
  }
  if (items.some((i) => i.chain?.name === chain)) script.push(`delete chain inet ${EGRESS_TABLE} ${chain}`);
  if (script.length > 0) nft(['-f', '-'], script.join('\n') + '\n');
}

/** VM names (`<id>.<tag>`) that have a chain in the shared table. */
export function egressVmNames(): { names: string[]; items: NftJson['nftables'] } {
  const items = listTable();
  const names = items.flatMap((i) => (i.chain ? [vmNameOfChain(i.chain.name)] : [])).filter((n): n is string => n !== undefined);
  return { names, items };
}
