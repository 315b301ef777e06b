/**
 * The agent's side of host power: its driver as configured by the operator (`none`, `command`: a sleep
 * command such as `systemctl suspend`; `wol`: the same, woken by a magic packet to the MAC it reports),
 * running the sleep command with its output kept for the error, what the agent reports to the server, and
 * what the Wake-on-LAN relay needs (the packet is sent by proc/wake-on-lan.ts).
 */
import { networkInterfaces } from 'node:os';
import type { HostPowerMsg } from '../core/agent-protocol.ts';
import { KilnError } from '../core/errors.ts';
import { parseMac, type PowerDriverKind } from '../core/power.ts';

export interface AgentPowerOptions {
  driver: PowerDriverKind;
  /** Run through `sh -c` when the server asks the host to sleep (command and wol drivers). */
  sleepCommand?: string;
  /** After the sleep command returns, wait this long before reconnecting (a suspend may take effect late). */
  settleMs?: number;
  /** Longest the sleep command may run before it counts as failed (default 10 min: rtcwake blocks until resume). */
  commandTimeoutMs?: number;
  /** wol: MAC to report; by default the first non-internal interface's (or `interface`'s). */
  mac?: string;
  interface?: string;
  /** wol: where the magic packet goes (default: the interface's IPv4 broadcast address, port 9). */
  broadcast?: string;
  port?: number;
}

/** Checks an agent's power options; every problem as one message each. */
export function powerOptionProblems(o: AgentPowerOptions): string[] {
  const out: string[] = [];
  if (o.driver !== 'none' && !o.sleepCommand) out.push(`the ${o.driver} power driver needs a sleep command (power.sleepCommand, e.g. "systemctl suspend")`);
  if (o.mac !== undefined) {
    try {
      parseMac(o.mac);
    } catch (e) {
      out.push((e as Error).message);
    }
  }
  if (o.port !== undefined && (!Number.isInteger(o.port) || o.port < 1 || o.port > 65535)) out.push(`Wake-on-LAN port ${o.port} is not a UDP port`);
  return out;
}

function ipv4Broadcast(address: string, netmask: string): string {
  const a = address.split('.').map(Number);
  const m = netmask.split('.').map(Number);
  return a.map((x, i) => (x | (~m[i]! & 255)) & 255).join('.');
}

/** What the agent reports about its power driver (for wol: the MAC and broadcast address to use). */
export function hostPowerReport(o: AgentPowerOptions | undefined): HostPowerMsg {
  if (!o || o.driver === 'none') return { driver: 'none' };
  if (o.driver === 'command') return { driver: 'command' };
  let mac = o.mac;
  let broadcast = o.broadcast;
  if (!mac || !broadcast) {
    for (const [name, addrs] of Object.entries(networkInterfaces())) {
      if (o.interface && name !== o.interface) continue;
      const v4 = addrs?.find((a) => a.family === 'IPv4' && !a.internal && a.mac !== '00:00:00:00:00:00');
      if (!v4) continue;
      mac ??= v4.mac;
      broadcast ??= ipv4Broadcast(v4.address, v4.netmask);
      break;
    }
  }
  if (!mac || !broadcast) {
    throw new KilnError('power.no_interface', `no network interface${o.interface ? ` named ${o.interface}` : ''} to wake this host through`, {
      hint: 'set power.mac and power.broadcast in the agent config, or power.interface to the NIC that has Wake-on-LAN enabled',
    });
  }
  return { driver: 'wol', mac: mac.toLowerCase(), broadcast, port: o.port ?? 9 };
}
