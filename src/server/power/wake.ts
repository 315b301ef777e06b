/**
 * How the server wakes a host: the operator's wake command (IPMI, a cloud CLI, anything; run through
 * `sh -c` with the host's name and reported addresses in the environment), or a Wake-on-LAN magic packet
 * to the MAC and broadcast address the host's agent reported before it slept. Also the optional status
 * command, run when a wake goes unanswered so the error says what the host's power looks like.
 *
 * Wake and status commands come from the server's configuration, never from an agent: an agent token must
 * not be able to make the control plane run a command of its choosing.
 */
import { KilnError } from '../../core/errors.ts';
import type { HostPower } from '../../core/power.ts';
import { commandFailure, runShellCommand } from '../../proc/shell-command.ts';
import { sendMagicPacket } from '../../proc/wake-on-lan.ts';

export interface WakeCommands {
  /** Run to wake a host whose driver is `command` (e.g. `ipmitool … chassis power on`). */
  wakeCommand?: string;
  /** Run when a wake goes unanswered; its output goes into the error. */
  statusCommand?: string;
  /** Longest a wake or status command may run (default 60 s). */
  commandTimeoutMs?: number;
}

/** Whether the server has a way to wake a host with this power report. */
export function canWake(power: HostPower | null, cmds: WakeCommands): boolean {
  if (!power) return false;
  if (power.driver === 'command') return cmds.wakeCommand !== undefined;
  if (power.driver === 'wol') return power.mac !== undefined && power.broadcast !== undefined;
  return false;
}

function hostEnv(host: { id: number; name: string; power: HostPower | null }): Record<string, string> {
  return {
    KILN_HOST: host.name,
    KILN_HOST_ID: String(host.id),
    ...(host.power?.mac ? { KILN_HOST_MAC: host.power.mac } : {}),
    ...(host.power?.broadcast ? { KILN_HOST_BROADCAST: host.power.broadcast } : {}),
  };
}

/** Wakes one host; throws KilnError power.wake_failed with the command's output when it fails. */
export async function wakeHost(host: { id: number; name: string; power: HostPower | null }, cmds: WakeCommands): Promise<void> {
  const p = host.power;
  if (p?.driver === 'wol' && p.mac && p.broadcast) {
    try {
      await sendMagicPacket(p.mac, p.broadcast, p.port ?? 9);
    } catch (e) {
      throw new KilnError('power.wake_failed', `could not send the Wake-on-LAN packet for ${host.name} to ${p.broadcast}:${p.port ?? 9}: ${(e as Error).message}`, { cause: e });
    }
    return;
  }
  if (p?.driver === 'command' && cmds.wakeCommand) {
    const timeoutMs = cmds.commandTimeoutMs ?? 60_000;
    const r = await runShellCommand(cmds.wakeCommand, hostEnv(host), timeoutMs);
    if (r.code !== 0 || r.timedOut) {
      throw new KilnError('power.wake_failed', commandFailure(`the wake command for ${host.name}`, r, timeoutMs), { hint: 'check power.wakeCommand in the server config; it runs through sh -c with KILN_HOST set' });
    }
    return;
  }
  throw new KilnError('power.cannot_wake', `host ${host.name} cannot be woken: its power driver is ${p?.driver ?? 'none'}${p?.driver === 'command' ? ' and the server has no power.wakeCommand' : ''}`, {
    hint: 'configure a power driver on its agent (docs/power.md), or start it by hand',
  });
}

/** The status command's verdict on a host, for an error message; undefined when none is configured. */
export async function hostPowerStatus(host: { id: number; name: string; power: HostPower | null }, cmds: WakeCommands): Promise<string | undefined> {
  if (!cmds.statusCommand) return undefined;
  const timeoutMs = cmds.commandTimeoutMs ?? 60_000;
  const r = await runShellCommand(cmds.statusCommand, hostEnv(host), timeoutMs);
  return commandFailure('the status command', r, timeoutMs);
}
