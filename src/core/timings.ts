/**
 * How long a job spent in each step, from its timestamps: queued → placed (wait) → VM booted and command
 * running (boot) → done (run). Pure; used by the metrics, the reports API and the dashboard.
 */
export interface JobTimes {
  createdAt: string | Date;
  placedAt: string | Date | null;
  bootingAt?: string | Date | null;
  runningAt: string | Date | null;
  finishedAt: string | Date | null;
}

/** A job whose command just started: its shape and times, as the wait/boot figures take them. */
export interface StartedTimes {
  arch: string;
  labels: string[];
  createdAt: Date;
  placedAt: Date | null;
  runningAt: Date;
}

export interface JobTimings {
  /** Queued to placed on a host (seconds); null while still queued or when it never was placed. */
  waitSeconds: number | null;
  /** Placed to the guest up and the command running (VM launch and boot). */
  bootSeconds: number | null;
  /** Command running to done. */
  runSeconds: number | null;
}

const ms = (x: string | Date | null | undefined): number | null => (x === null || x === undefined ? null : new Date(x).getTime());
const span = (a: number | null, b: number | null): number | null => (a === null || b === null ? null : Math.max(0, (b - a) / 1000));

export function jobTimings(t: JobTimes): JobTimings {
  const created = ms(t.createdAt);
  const placed = ms(t.placedAt);
  const running = ms(t.runningAt);
  return { waitSeconds: span(created, placed), bootSeconds: span(placed, running), runSeconds: span(running, ms(t.finishedAt)) };
}

/** GitHub's pickup latency as the user feels it: the job's created_at on GitHub to in_progress. */
export function pickupSeconds(githubCreatedAt: string | Date | null, inProgressAt: string | Date | null): number | null {
  return span(ms(githubCreatedAt), ms(inProgressAt));
}

/**
 * The label set a job is counted under: its labels sorted and joined by commas, or `(none)` for jobs
 * submitted by fields alone. Metrics bound how many distinct sets they keep (see `LabelSetLimiter`).
 */
export function labelSetKey(labels: readonly string[]): string {
  return labels.length === 0 ? '(none)' : [...new Set(labels)].sort().join(',');
}

/** Keeps a metric's label-set values bounded: the first `max` sets seen keep their name, later ones are `(other)`. */
export class LabelSetLimiter {
  readonly #seen = new Set<string>();
  constructor(readonly max = 100) {}
  key(labels: readonly string[]): string {
    const k = labelSetKey(labels);
    if (this.#seen.has(k)) return k;
    if (this.#seen.size >= this.max) return '(other)';
    this.#seen.add(k);
    return k;
  }
}

/** Nearest-rank percentile of ascending `sorted` (p in 0..100); null for no values. */
export function percentile(sorted: readonly number[], p: number): number | null {
  if (sorted.length === 0) return null;
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1] ?? null;
}

export interface Summary {
  count: number;
  p50: number | null;
  p95: number | null;
  p99: number | null;
  max: number | null;
}

export function summarize(values: readonly number[]): Summary {
  const s = [...values].sort((a, b) => a - b);
  return { count: s.length, p50: percentile(s, 50), p95: percentile(s, 95), p99: percentile(s, 99), max: s.length ? (s[s.length - 1] ?? null) : null };
}

/** Histogram buckets (seconds) for wait, boot and pickup: sub-second placements up to a long queue. */
export const WAIT_BUCKETS = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800];
export const BOOT_BUCKETS = [0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120];
export const PICKUP_BUCKETS = [1, 2.5, 5, 10, 15, 20, 30, 45, 60, 90, 120, 300, 600, 1800];

/** What usage reports group finished jobs by. */
export const USAGE_DIMENSIONS = ['repository', 'organization', 'user', 'label', 'tenant'] as const;
export type UsageDimension = (typeof USAGE_DIMENSIONS)[number];
