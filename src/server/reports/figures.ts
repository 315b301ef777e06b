/**
 * The wait, boot and pickup histograms in /metrics (issue 21's "figures"). Observed when a job's command
 * starts (`job.state` → running: wait = queued → placed, boot = placed → running, once per attempt that
 * ran) and when a GitHub job goes in_progress (pickup = GitHub's created_at → in_progress). Each event is
 * emitted by exactly one replica, so the fleet's figures are the sum over replicas, as Prometheus adds them.
 * A start stored by the phase writer carries its times with the event (the update returns them); other
 * starts' job rows are read in one statement per event-loop turn, never per job.
 */
import { Counter, Gauge, Histogram } from 'prom-client';
import { HOST_STATE_LIST } from '../../core/host-state.ts';
import { parseLabels } from '../../core/requirements.ts';
import { BOOT_BUCKETS, jobTimings, type JobTimes, LabelSetLimiter, PICKUP_BUCKETS, pickupSeconds, WAIT_BUCKETS } from '../../core/timings.ts';
import { jobTimesByIds } from '../../store/reports.ts';
import { listHosts } from '../../store/hosts.ts';
import type { ServerContext } from '../context.ts';

export const FIGURE_METRICS = [
  'kiln_job_wait_seconds',
  'kiln_job_boot_seconds',
  'kiln_github_pickup_seconds',
  'kiln_github_runner_online_seconds',
  'kiln_hosts',
  'kiln_job_boot_failures_total',
] as const;

export interface GitHubStart {
  labels: string[];
  createdAt: Date | string | null;
  startedAt: Date | string | null;
  /** When the runner that took the job came online (null: not known). */
  runnerOnlineAt?: Date | string | null;
}

export interface Figures {
  /** A GitHub job went in_progress (called by the GitHub service). */
  githubStarted(s: GitHubStart): void;
  /** Resolves once every job seen running so far is observed (tests read /metrics after it). */
  flush(): Promise<void>;
  close(): void;
}

export function makeFigures(ctx: ServerContext): Figures {
  const registers = [ctx.metrics.registry];
  const labelNames = ['arch', 'labels'] as const;
  const wait = new Histogram({ name: 'kiln_job_wait_seconds', help: 'Queued to placed on a host, per job attempt that started', labelNames, buckets: WAIT_BUCKETS, registers });
  const boot = new Histogram({ name: 'kiln_job_boot_seconds', help: 'Placed to the VM booted and the command running', labelNames, buckets: BOOT_BUCKETS, registers });
  const pickup = new Histogram({
    name: 'kiln_github_pickup_seconds',
    help: "GitHub's created_at of a workflow job to its in_progress (the pickup latency a user feels)",
    labelNames,
    buckets: PICKUP_BUCKETS,
    registers,
  });
  const runnerOnline = new Histogram({
    name: 'kiln_github_runner_online_seconds',
    help: "GitHub's created_at of a workflow job to the runner that took it coming online (0: a runner was already waiting); the rest of the pickup is GitHub assigning the job",
    labelNames,
    buckets: PICKUP_BUCKETS,
    registers,
  });
  // Fleet-wide (read from the store at scrape time, so every replica reports every host, as the mirror gauges do).
  new Gauge({
    name: 'kiln_hosts',
    help: 'Hosts by state (online, draining, asleep, waking, offline), cordoned ones included',
    labelNames: ['state'],
    registers,
    async collect() {
      const hosts = await listHosts(ctx.store.db).catch(() => undefined);
      if (!hosts) return;
      for (const st of HOST_STATE_LIST) this.set({ state: st }, hosts.filter((h) => h.state === st).length);
    },
  });
  const bootFailures = new Counter({
    name: 'kiln_job_boot_failures_total',
    help: 'Job attempts that failed after placement but before their command ran (VM launch or boot failed)',
    registers,
  });
  const sets = new LabelSetLimiter(100);
  let pending = new Set<number>();
  let inFlight: Promise<void> = Promise.resolve();
  let scheduled = false;

  const observeOne = (r: { arch: string; labels: readonly string[] } & JobTimes) => {
    const t = jobTimings(r);
    const labels = { arch: r.arch, labels: sets.key(r.labels) };
    if (t.waitSeconds !== null) wait.observe(labels, t.waitSeconds);
    if (t.bootSeconds !== null) boot.observe(labels, t.bootSeconds);
  };
  const observe = async (ids: number[]) => {
    for (const r of await jobTimesByIds(ctx.store.db, ids)) observeOne(r);
  };
  const drain = () => {
    scheduled = false;
    if (pending.size === 0) return;
    const ids = [...pending];
    pending = new Set();
    inFlight = inFlight.then(() => observe(ids)).catch((e: unknown) => ctx.log.warn({ err: e }, 'could not read job times for the wait/boot figures'));
  };
  const off = ctx.events.on('job.state', (e) => {
    // A job failed for being lost before it started too often (job.too_many_attempts) is not a boot failure:
    // its hosts went away or refused it; each of those losses is already visible as a requeue.
    if (e.to === 'failed' && (e.from === 'placed' || e.from === 'booting') && e.job.error?.code !== 'job.too_many_attempts') bootFailures.inc();
    if (e.to !== 'running') return;
    // The phase writer's update returns the times with the change (the usual start): nothing to read.
    if (e.started) return observeOne({ ...e.started, finishedAt: null });
    pending.add(e.job.id);
    if (!scheduled) {
      scheduled = true;
      setImmediate(drain);
    }
  });
  return {
    githubStarted(s) {
      const seconds = pickupSeconds(s.createdAt, s.startedAt);
      if (seconds === null) return;
      let arch = 'unknown';
      try {
        arch = parseLabels(s.labels).arch;
      } catch {
        // labels kiln refuses still have a pickup (someone else's runner may take the job)
      }
      const labels = { arch, labels: sets.key(s.labels) };
      pickup.observe(labels, seconds);
      const online = s.runnerOnlineAt ? pickupSeconds(s.createdAt, s.runnerOnlineAt) : null;
      if (online !== null) runnerOnline.observe(labels, Math.min(online, seconds));
    },
    async flush() {
      drain();
      await inFlight;
    },
    close: off,
  };
}
