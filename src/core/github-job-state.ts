/**
 * A GitHub job's state as GitHub reports it (workflow_job actions), forward-only: waiting → queued →
 * in_progress → completed. A late `queued` after `completed` is a no-op, so deliveries in any order and
 * re-reads from the API converge on the latest state.
 */
export const GH_JOB_STATES = ['waiting', 'queued', 'in_progress', 'completed'] as const;
export type GhJobState = (typeof GH_JOB_STATES)[number];

export function ghStateOfAction(action: string): GhJobState | undefined {
  return (GH_JOB_STATES as readonly string[]).includes(action) ? (action as GhJobState) : undefined;
}

/** Forward-only: a state may only move to a later one. */
export function advances(from: GhJobState, to: GhJobState): boolean {
  return GH_JOB_STATES.indexOf(to) > GH_JOB_STATES.indexOf(from);
}

/** kiln's decision about a GitHub job: pending until checked, then accepted, ignored or refused. */
export type GhDecision = 'pending' | 'accepted' | 'ignored' | 'refused';
