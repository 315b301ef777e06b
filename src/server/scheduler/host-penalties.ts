/**
 * Which hosts placement should avoid for a while: every launch that failed on a host (the VM could not be
 * launched, did not boot or crashed; a GitHub runner that ended before taking its job) adds 1 to the host's
 * penalty, and the penalty halves every `halfLifeMs`. Placement reads it rounded (`level`): a host with a
 * level above another's takes a job only when no host of a lower level has room for it, so a host that keeps
 * failing is de-preferred, never banned (when it is the only fit it still gets the job), and forgiven as
 * its failures age. Pure bookkeeping with the time passed in; one per replica (each replica places on the
 * hosts it holds and sees their results).
 */
export interface HostPenalties {
  /** A launch failed on `hostId` at `now`. */
  failed(hostId: number, now: number): void;
  /** The hosts with a level above 0 at `now`, with their level (placement's preference input). */
  levels(now: number): ReadonlyMap<number, number>;
  /** The decayed failure count of one host (for logs and tests). */
  score(hostId: number, now: number): number;
}

export const DEFAULT_PENALTY_HALF_LIFE_MS = 10 * 60_000;

export function makeHostPenalties(halfLifeMs = DEFAULT_PENALTY_HALF_LIFE_MS): HostPenalties {
  if (!(halfLifeMs > 0)) throw new RangeError('the penalty half-life must be positive');
  const scores = new Map<number, { value: number; at: number }>();
  const decayed = (s: { value: number; at: number }, now: number) => s.value * 2 ** (-Math.max(0, now - s.at) / halfLifeMs);
  const empty: ReadonlyMap<number, number> = new Map();
  return {
    failed(hostId, now) {
      const s = scores.get(hostId);
      scores.set(hostId, { value: (s ? decayed(s, now) : 0) + 1, at: now });
    },
    levels(now) {
      if (scores.size === 0) return empty;
      const out = new Map<number, number>();
      for (const [id, s] of scores) {
        const v = decayed(s, now);
        const level = Math.round(v);
        if (level > 0) out.set(id, level);
        // Forgotten once it no longer counts (a host's failures do not pile up for ever).
        else if (v < 0.25) scores.delete(id);
      }
      return out;
    },
    score(hostId, now) {
      const s = scores.get(hostId);
      return s ? decayed(s, now) : 0;
    },
  };
}
