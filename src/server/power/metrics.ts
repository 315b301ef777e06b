/** Power metrics, on the server's own registry: host-seconds per state, wakes, wake latency, jobs that waited. */
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import type { PowerHostRow } from '../../store/power.ts';

export interface PowerMetrics {
  /** Host-seconds spent in each state, counted by the leader each pass (fleet-wide, on the leader). */
  stateSeconds: Counter<'state'>;
  /** Wake requests by what became of them: requested, sent, retried, done, failed. */
  wakes: Counter<'result'>;
  sleeps: Counter<'result'>;
  wakeLatency: Histogram;
  jobsWaited: Counter;
  jobWakeWait: Histogram;
}

export function makePowerMetrics(registry: Registry, hosts: () => Promise<PowerHostRow[]>): PowerMetrics {
  // Hosts per state (`kiln_hosts{state}`) is exported by the figures (server/reports/figures.ts).
  return {
    stateSeconds: new Counter({ name: 'kiln_host_state_seconds_total', help: 'Host-seconds spent in each state (counted by the leader)', labelNames: ['state'], registers: [registry] }),
    wakes: new Counter({ name: 'kiln_power_wakes_total', help: 'Wake requests: requested, sent, retried, done (the host connected), failed (given up)', labelNames: ['result'], registers: [registry] }),
    sleeps: new Counter({ name: 'kiln_power_sleeps_total', help: 'Sleep requests: requested, failed', labelNames: ['result'], registers: [registry] }),
    wakeLatency: new Histogram({
      name: 'kiln_power_wake_latency_seconds',
      help: 'From a wake request to its host connecting',
      buckets: [1, 5, 10, 30, 60, 120, 300, 600, 1800],
      registers: [registry],
    }),
    jobsWaited: new Counter({ name: 'kiln_jobs_waited_for_wake_total', help: 'Jobs placed on a woken host that were submitted before it came up', registers: [registry] }),
    jobWakeWait: new Histogram({
      name: 'kiln_job_wake_wait_seconds',
      help: 'Submit-to-placed time of jobs that waited for a host to wake',
      buckets: [1, 5, 10, 30, 60, 120, 300, 600, 1800],
      registers: [registry],
    }),
  };
}
