/**
 * Host power: what an agent reports about how its host sleeps and wakes, the sleep policy an operator
 * configures on the server (pools, idle time, minimum awake hosts, schedules), schedule windows in a time
 * zone, and the Wake-on-LAN magic packet. Pure: no I/O. See docs/power.md.
 */
import type { Arch } from './arch.ts';
import { KilnError } from './errors.ts';

export const POWER_DRIVERS = ['none', 'command', 'wol'] as const;
export type PowerDriverKind = (typeof POWER_DRIVERS)[number];

/** What a host's agent reports about its power driver (stored on the host row, shown by the API). */
export interface HostPower {
  driver: PowerDriverKind;
  /** wol: the MAC address to wake (aa:bb:cc:dd:ee:ff), reported by the agent before it sleeps. */
  mac?: string;
  /** wol: where the magic packet goes: a broadcast (or, in tests, loopback) address and UDP port. */
  broadcast?: string;
  port?: number;
  /** The last power error on this host (a sleep or wake command that failed, with its output). */
  lastError?: { at: string; action: 'sleep' | 'wake'; message: string };
}

export const WEEKDAYS = ['sun', 'mon', 'tue', 'wed', 'thu', 'fri', 'sat'] as const;
export type Weekday = (typeof WEEKDAYS)[number];

/** Keep at least `minAwake` hosts of the pool awake on these days between `from` and `to` (local time). */
export interface PowerSchedule {
  days: Weekday[];
  /** Minutes after local midnight: [from, to). `to` may be below `from` (a window across midnight). */
  fromMin: number;
  toMin: number;
  timeZone: string;
  /** Hosts kept awake in the window; Infinity keeps every host of the pool awake. */
  minAwake: number;
}

/** Which hosts a pool covers: every host of `arch` (if given) carrying all of `labels`. */
export interface PoolMatch {
  arch?: Arch;
  labels?: string[];
}

export interface PowerPool {
  name: string;
  match: PoolMatch;
  /** Sleep a host after this long without jobs; undefined: hosts of this pool never sleep. */
  idleAfterMs: number | undefined;
  /** Hosts of the pool kept awake at all times (the warm buffer). */
  minAwake: number;
  schedules: PowerSchedule[];
}

export interface PowerPolicy {
  /** First matching pool wins; a host in no pool never sleeps. */
  pools: PowerPool[];
  /** A wake not answered (the agent connecting) within this long is retried. */
  wakeTimeoutMs: number;
  /** Wake attempts per host before it is marked and another host is tried. */
  wakeAttempts: number;
  /** Backoff before retry n (n ≥ 1): min(backoffMs * 2^(n-1), maxBackoffMs). */
  backoffMs: number;
  maxBackoffMs: number;
  /** How long a host that failed to wake is passed over (an operator's `kiln hosts wake` clears it). */
  markedForMs: number;
}

export const DEFAULT_POWER_POLICY: PowerPolicy = {
  pools: [],
  wakeTimeoutMs: 5 * 60_000,
  wakeAttempts: 3,
  backoffMs: 10_000,
  maxBackoffMs: 5 * 60_000,
  markedForMs: 60 * 60_000,
};

export function poolMatches(m: PoolMatch, host: { arch: Arch; labels: readonly string[] }): boolean {
  return (m.arch === undefined || m.arch === host.arch) && (m.labels ?? []).every((l) => host.labels.includes(l));
}

export function poolOf(policy: Pick<PowerPolicy, 'pools'>, host: { arch: Arch; labels: readonly string[] }): PowerPool | undefined {
  return policy.pools.find((p) => poolMatches(p.match, host));
}

const dayFormat = new Map<string, Intl.DateTimeFormat>();

/** Weekday and minutes after midnight of `nowMs` in `timeZone`. */
export function localTime(nowMs: number, timeZone: string): { day: Weekday; minute: number } {
  let f = dayFormat.get(timeZone);
  if (!f) {
    f = new Intl.DateTimeFormat('en-US', { timeZone, weekday: 'short', hour: '2-digit', minute: '2-digit', hourCycle: 'h23' });
    dayFormat.set(timeZone, f);
  }
  const parts = f.formatToParts(new Date(nowMs));
  const get = (t: string) => parts.find((p) => p.type === t)?.value ?? '';
  const day = get('weekday').slice(0, 3).toLowerCase() as Weekday;
  return { day, minute: Number(get('hour')) * 60 + Number(get('minute')) };
}

/** Whether `nowMs` falls in the schedule's window (a window across midnight belongs to the day it starts). */
export function inSchedule(s: PowerSchedule, nowMs: number): boolean {
  const { day, minute } = localTime(nowMs, s.timeZone);
  if (s.fromMin <= s.toMin) return s.days.includes(day) && minute >= s.fromMin && minute < s.toMin;
  if (minute >= s.fromMin) return s.days.includes(day);
  const yesterday = WEEKDAYS[(WEEKDAYS.indexOf(day) + 6) % 7]!;
  return minute < s.toMin && s.days.includes(yesterday);
}

/** The pool's minimum awake hosts at `nowMs`: the largest of its own and its schedules' in their windows. */
export function minAwakeAt(pool: PowerPool, nowMs: number): number {
  let n = pool.minAwake;
  for (const s of pool.schedules) if (inSchedule(s, nowMs)) n = Math.max(n, s.minAwake);
  return n;
}

/** `mon-fri`, `sat,sun`, `mon-wed,fri`, `daily` → weekdays. */
export function parseDays(text: string): Weekday[] {
  const t = text.trim().toLowerCase();
  if (t === 'daily' || t === 'every day' || t === '*') return [...WEEKDAYS];
  const out = new Set<Weekday>();
  for (const part of t.split(',').map((s) => s.trim())) {
    const [a, b] = part.split('-').map((s) => s.trim().slice(0, 3));
    const ia = WEEKDAYS.indexOf(a as Weekday);
    const ib = b === undefined ? ia : WEEKDAYS.indexOf(b as Weekday);
    if (ia < 0 || ib < 0) throw new KilnError('power.bad_schedule', `"${part}" is not a day or a range of days (e.g. mon-fri, sat,sun, daily)`);
    for (let i = ia; ; i = (i + 1) % 7) {
      out.add(WEEKDAYS[i]!);
      if (i === ib) break;
    }
  }
  return WEEKDAYS.filter((d) => out.has(d));
}

/** `HH:MM` → minutes after midnight (24:00 allowed as the end of a day). */
export function parseClock(text: string): number {
  const m = /^(\d{1,2}):(\d{2})$/.exec(text.trim());
  const v = m ? Number(m[1]) * 60 + Number(m[2]) : NaN;
  if (!m || Number(m[2]) > 59 || v > 24 * 60) throw new KilnError('power.bad_schedule', `"${text}" is not a time of day HH:MM`);
  return v;
}

/** Checks that `timeZone` is an IANA zone this Node knows (e.g. Europe/Berlin, UTC). */
export function assertTimeZone(timeZone: string): void {
  try {
    new Intl.DateTimeFormat('en-US', { timeZone });
  } catch {
    throw new KilnError('power.bad_time_zone', `"${timeZone}" is not a time zone`, { hint: 'use an IANA name such as Europe/Berlin, America/New_York or UTC' });
  }
}

/** `aa:bb:cc:dd:ee:ff` (or with dashes) → 6 bytes. */
export function parseMac(text: string): Buffer {
  const hex = text.trim().toLowerCase();
  if (!/^[0-9a-f]{2}([:-][0-9a-f]{2}){5}$/.test(hex)) throw new KilnError('power.bad_mac', `"${text}" is not a MAC address (aa:bb:cc:dd:ee:ff)`);
  return Buffer.from(hex.replace(/[:-]/g, ''), 'hex');
}

/** The Wake-on-LAN magic packet: 6 bytes of 0xff, then the MAC 16 times (102 bytes). */
export function magicPacket(mac: string): Buffer {
  const m = parseMac(mac);
  const out = Buffer.alloc(6 + 16 * 6, 0xff);
  for (let i = 0; i < 16; i++) m.copy(out, 6 + i * 6);
  return out;
}

/** Backoff before wake retry `n` (n ≥ 1). */
export function wakeBackoffMs(p: Pick<PowerPolicy, 'backoffMs' | 'maxBackoffMs'>, n: number): number {
  return Math.min(p.backoffMs * 2 ** Math.max(0, n - 1), p.maxBackoffMs);
}
