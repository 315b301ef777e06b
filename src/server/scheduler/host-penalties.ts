/**
 * Which hosts placement should avoid for a while: every launch that failed on a host (the VM could not be
 * launched, did not boot or crashed; a GitHub runner that ended before taking its job) adds 1 to the host's
 * penalty, and the penalty halves every `halfLifeMs`. Placement reads it rounded (the level): a host with a
 * level above another's takes a job only when no host of a lower level has room for it, so a host that keeps
 * failing is de-preferred, never banned (when it is the only fit it still gets the job), and forgiven as
 * its failures age. Pure, with the time passed in. The failures come from the store
 * (store/launch-failures.ts), so every replica, whichever received the failure, sees the same penalties.
 */
import type { LaunchFailure } from '../../store/launch-failures.ts';

export const DEFAULT_PENALTY_HALF_LIFE_MS = 10 * 60_000;

/** Failures older than this many half-lives weigh under 1/32 together with up to ~16 others: not read. */
export const PENALTY_HORIZON_HALF_LIVES = 5;

/** The decayed failure count per host at `now`. */
export function penaltyScores(failures: readonly LaunchFailure[], now: number, halfLifeMs = DEFAULT_PENALTY_HALF_LIFE_MS): Map<number, number> {
  if (!(halfLifeMs > 0)) throw new RangeError('the penalty half-life must be positive');
  const out = new Map<number, number>();
  for (const f of failures) out.set(f.hostId, (out.get(f.hostId) ?? 0) + 2 ** (-Math.max(0, now - f.at) / halfLifeMs));
  return out;
}

/** The hosts with a level above 0 at `now`, with their level (placement's preference input). */
export function penaltyLevels(failures: readonly LaunchFailure[], now: number, halfLifeMs = DEFAULT_PENALTY_HALF_LIFE_MS): Map<number, number> {
  const out = new Map<number, number>();
  for (const [id, v] of penaltyScores(failures, now, halfLifeMs)) {
    const level = Math.round(v);
    if (level > 0) out.set(id, level);
  }
  return out;
}
