/**
 * GitHub metrics on the server's registry: webhook deliveries by answer, runner failures before a job,
 * give-ups, GitHub API calls and job reads by reason (this replica), and, read from the store at each scrape (fleet-wide),
 * GitHub jobs by decision and state, runners by state, and deliveries waiting to be processed.
 */
import { Counter, Gauge } from 'prom-client';
import { countPendingDeliveries } from '../../store/github-deliveries.ts';
import { countGhJobsByDecisionAndState } from '../../store/github-jobs.ts';
import { countRunnersByState } from '../../store/github-runners.ts';
import type { ServerContext } from '../context.ts';

export interface GitHubMetrics {
  deliveries: Counter<'result'>;
  runnerFailures: Counter<'code'>;
  giveUps: Counter;
  apiCalls: Counter<'result'>;
  jobReads: Counter<'why'>;
}

export function makeGitHubMetrics(ctx: ServerContext): GitHubMetrics {
  const registers = [ctx.metrics.registry];
  const db = ctx.store.db;
  new Gauge({
    name: 'kiln_github_jobs',
    help: "GitHub jobs kiln has seen, by kiln's decision and the job's state on GitHub",
    labelNames: ['decision', 'state'],
    registers,
    async collect() {
      const rows = await countGhJobsByDecisionAndState(db).catch(() => []);
      this.reset();
      for (const r of rows) this.set({ decision: r.decision, state: r.state }, r.n);
    },
  });
  new Gauge({
    name: 'kiln_github_runners',
    help: 'JIT runners kiln registered, by state',
    labelNames: ['state'],
    registers,
    async collect() {
      const rows = await countRunnersByState(db).catch(() => []);
      this.reset();
      for (const r of rows) this.set({ state: r.state }, r.n);
    },
  });
  new Gauge({
    name: 'kiln_github_deliveries_pending',
    help: 'Webhook deliveries accepted and not yet processed',
    registers,
    async collect() {
      this.set(await countPendingDeliveries(db).catch(() => 0));
    },
  });
  return {
    deliveries: new Counter({
      name: 'kiln_github_webhook_deliveries_total',
      help: 'Webhook deliveries this replica answered, by result (accepted, duplicate, ping, refused)',
      labelNames: ['result'],
      registers,
    }),
    runnerFailures: new Counter({
      name: 'kiln_github_runner_failures_total',
      help: 'Runners that ended before taking their job (VM failed, launch refused, image missing, boot timeout, offline), by error code',
      labelNames: ['code'],
      registers,
    }),
    giveUps: new Counter({
      name: 'kiln_github_jobs_given_up_total',
      help: 'GitHub jobs kiln gave up on after the bounded number of runner attempts',
      registers,
    }),
    apiCalls: new Counter({
      name: 'kiln_github_api_calls_total',
      help: 'GitHub API calls this replica made, by result (ok, rate_limited, throttled: held back by kiln\'s own budget)',
      labelNames: ['result'],
      registers,
    }),
    jobReads: new Counter({
      name: 'kiln_github_job_reads_total',
      help: 'GitHub jobs this replica read back from the API, by why (admission; unheard_runner, idle_runner: the reconciler doubted the queue; cache_trust: a runner asking to write its cache before kiln learnt its job)',
      labelNames: ['why'],
      registers,
    }),
  };
}
