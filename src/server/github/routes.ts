/** The GitHub part's REST routes: kiln's decision per GitHub job, its runners, and usage records. */
import { API } from '../../core/http-contract.ts';
import { listGhJobs, listUsage } from '../../store/github-jobs.ts';
import { listRunnersForApi } from '../../store/github-runners.ts';
import type { Db } from '../../store/store.ts';
import { defineRoute, type RouteDef } from '../http/routes.ts';
import { mayAccessTenant } from '../http/auth.ts';
import type { Token } from '../../core/host.ts';

const iso = (x: number | null) => (x === null ? null : new Date(x).toISOString());

export function githubRoutes(db: Db, tenant: string): RouteDef[] {
  // GitHub records (jobs, runners, usage) belong to the GitHub tenant: for other tenants' tokens the lists are
  // empty, as every listing is scoped to the token's tenant (an admin's sees everything).
  const seesGitHub = (token: Token | undefined): boolean => mayAccessTenant(token, tenant);
  return [
    defineRoute(
      API.githubJobs,
      { tag: 'github', summary: "GitHub jobs kiln has seen, with kiln's decision (accepted, ignored, refused and why)", permission: 'read' },
      async (req, _reply, token) => {
        if (!seesGitHub(token)) return { jobs: [] };
        const q = req.query;
        const jobs = await listGhJobs(db, { decision: q.decision, repo: q.repo, limit: q.limit ?? 100 });
        return {
          jobs: jobs.map((j) => ({
            jobId: j.jobId,
            runAttempt: j.runAttempt,
            runId: j.runId,
            repo: j.repo,
            labels: j.labels,
            state: j.state,
            decision: j.decision,
            reason: j.reasonCode ? { code: j.reasonCode, message: j.reason ?? '' } : null,
            runnerName: j.runnerName,
            workflow: j.workflow,
            failures: j.failures,
            nextAttemptAt: j.decision === 'accepted' && j.state === 'queued' ? iso(j.nextAttemptAt) : null,
          })),
        };
      },
    ),
    defineRoute(API.githubRunners, { tag: 'github', summary: "kiln's JIT runners: state, labels, VM (kiln job), the GitHub job they ran", permission: 'read' }, async (req, _reply, token) => {
      if (!seesGitHub(token)) return { runners: [] };
      const all = req.query.all === true;
      return {
        runners: (await listRunnersForApi(db, all)).map((r) => ({
          name: r.name,
          state: r.state,
          scope: r.scope.level === 'org' ? r.scope.owner : `${r.scope.owner}/${r.scope.repo ?? ''}`,
          labels: r.labels,
          runnerId: r.runnerId,
          kilnJobId: r.kilnJobId,
          ghJobId: r.job?.jobId ?? null,
          lastError: r.lastError,
          createdAt: iso(r.createdAt),
          endedAt: iso(r.endedAt),
        })),
      };
    }),
    defineRoute(
      API.githubUsage,
      { tag: 'github', summary: 'Usage records per GitHub job: repository, organization, sender, labels, workflow, times, host, VM size, conclusion', permission: 'read' },
      async (req, _reply, token) => {
        if (!seesGitHub(token)) return { usage: [] };
        const q = req.query;
        return { usage: await listUsage(db, { repo: q.repo, org: q.org, limit: q.limit ?? 1000 }) };
      },
    ),
  ];
}
