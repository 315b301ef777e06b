/** The GitHub part's REST routes: kiln's decision per GitHub job, its runners, and usage records. */
import { API } from '../../core/http-contract.ts';
import { listGhJobs, listUsage } from '../../store/github-jobs.ts';
import { listRunnersForApi } from '../../store/github-runners.ts';
import type { Db } from '../../store/store.ts';
import { defineRoute, type RouteDef } from '../http/routes.ts';
import { mayAccessTenant } from '../http/auth.ts';
import { capByBytes } from '../http/listing.ts';
import type { Token } from '../../core/host.ts';

const iso = (x: number | null) => (x === null ? null : new Date(x).toISOString());

export function githubRoutes(db: Db, tenant: string): RouteDef[] {
  // GitHub records (jobs, runners, usage) belong to the GitHub tenant: for other tenants' tokens the lists are
  // empty, as every listing is scoped to the token's tenant (an admin's sees everything).
  const seesGitHub = (token: Token | undefined): boolean => mayAccessTenant(token, tenant);
  return [
    defineRoute(
      API.githubJobs,
      {
        tag: 'github',
        summary: "GitHub jobs kiln has seen, newest first, with kiln's decision (accepted, ignored, refused and why); at most `limit` and 4 MiB of JSON (`truncated` says it was cut: lower `limit` or filter)",
        permission: 'read',
      },
      async (req, _reply, token) => {
        if (!seesGitHub(token)) return { jobs: [], truncated: false };
        const q = req.query;
        const jobs = await listGhJobs(db, { decision: q.decision, repo: q.repo, limit: q.limit ?? 100 });
        const { items, cut } = capByBytes(
          jobs.map((j) => ({
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
        );
        return { jobs: items, truncated: cut };
      },
    ),
    defineRoute(API.githubRunners, { tag: 'github', summary: "kiln's JIT runners: state, labels, VM (kiln job), the GitHub job they ran", permission: 'read' }, async (req, _reply, token) => {
      if (!seesGitHub(token)) return { runners: [], truncated: false };
      const { items, cut } = capByBytes(
        (await listRunnersForApi(db, req.query.all === true, req.query.limit ?? 1000)).map((r) => ({
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
      );
      return { runners: items, truncated: cut };
    }),
    defineRoute(
      API.githubUsage,
      { tag: 'github', summary: 'Usage records per GitHub job: repository, organization, sender, labels, workflow, times, host, VM size, conclusion', permission: 'read' },
      async (req, _reply, token) => {
        if (!seesGitHub(token)) return { usage: [], truncated: false };
        const q = req.query;
        const { items, cut } = capByBytes(await listUsage(db, { repo: q.repo, org: q.org, limit: q.limit ?? 1000 }));
        return { usage: items, truncated: cut };
      },
    ),
  ];
}
