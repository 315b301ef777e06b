/** A host as the control plane sees it. */
import type { HostCacheMsg, MirrorStatusMsg } from './agent-protocol.ts';
import type { Arch } from './arch.ts';
import type { HostState } from './host-state.ts';
import type { HostPower } from './power.ts';

export interface Resources {
  cpus: number;
  memoryBytes: number;
  diskBytes: number;
}

export interface Host {
  id: number;
  name: string;
  state: HostState;
  cordoned: boolean;
  drainRequested: boolean;
  arch: Arch;
  capacity: Resources;
  accel: 'kvm' | 'tcg' | 'none';
  labels: string[];
  driver: string;
  agentVersion: string;
  serverId: string | null;
  connectedAt: string | null;
  lastSeenAt: string;
  createdAt: string;
  /** The host's registry mirror as its agent last reported it; null when it runs none. */
  mirror: HostMirror | null;
  /** The warm caches the host's agent last reported (docs/caches.md); absent: none reported. */
  caches?: HostCacheMsg[];
  /** Since when the host is in its state (ISO time). */
  stateSince: string;
  /** How the host sleeps and wakes (its agent's report); null: never reported (none). */
  power: HostPower | null;
  /** Wakes that failed in a row; reset when the host connects. */
  wakeFailures: number;
  /** After failed wakes the power manager passes the host over until then (ISO time). */
  wakeMarkedUntil: string | null;
}

/** A registry mirror's status (src/agent/mirror.ts) as reported over the agent protocol and stored. */
export type HostMirror = MirrorStatusMsg & {
  /** When the server stored this report. */
  reportedAt?: string;
};

export const TOKEN_ROLES = ['admin', 'operator', 'read-only', 'viewer', 'agent'] as const;
export type TokenRole = (typeof TOKEN_ROLES)[number];

export interface Token {
  id: number;
  name: string;
  role: TokenRole;
  tenant: string;
  createdAt: string;
  lastUsedAt: string | null;
  revokedAt: string | null;
}
