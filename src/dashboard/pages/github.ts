/// <reference lib="dom" />
import { ApiError } from '../api.ts';
import { ago, badge, h, table, throttle } from '../dom.ts';
import { loadInto, type Page, type PageContext } from '../page.ts';

interface GhJob {
  jobId: number;
  runAttempt: number;
  runId: number;
  repo: string;
  labels: string[];
  state: string;
  decision: string;
  reason: { code: string; message: string } | null;
  workflow: string | null;
}
interface GhRunner {
  name: string;
  state: string;
  scope: string;
  labels: string[];
  kilnJobId: number | null;
  ghJobId: number | null;
  lastError: string | null;
  createdAt: string | null;
}

export function githubPage(ctx: PageContext): Page {
  const body = h('div', { 'aria-busy': 'true' }, h('p', {}, 'Loading GitHub…'));
  const el = h('section', { 'aria-labelledby': 'gh-h' }, h('h2', { id: 'gh-h' }, 'GitHub'), body);
  const load = () =>
    loadInto(body, async () => {
      try {
        const [{ jobs }, { runners }] = await Promise.all([ctx.api.get<{ jobs: GhJob[] }>('/v1/github/jobs?decision=refused&limit=200'), ctx.api.get<{ runners: GhRunner[] }>('/v1/github/runners')]);
        return h(
          'div',
          {},
          table(
            'Refused GitHub jobs and why',
            ['Job', 'Repository', 'Workflow', 'Labels', 'Reason'],
            jobs.map((j) => [
              h('a', { href: `https://github.com/${j.repo}/actions/runs/${j.runId}`, rel: 'noreferrer', target: '_blank' }, `${j.jobId}/${j.runAttempt}`),
              j.repo,
              j.workflow ?? '—',
              j.labels.join(', '),
              j.reason ? h('span', { title: j.reason.code }, j.reason.message) : '—',
            ]),
            { empty: 'No GitHub job was refused.', wide: [2] },
          ),
          table(
            "kiln's runners",
            ['Runner', 'State', 'Scope', 'Labels', 'VM', 'Started', 'Last error'],
            runners.map((r) => [r.name, badge(r.state), r.scope, r.labels.join(', '), r.kilnJobId ? h('a', { href: `#/jobs/${r.kilnJobId}` }, `#${r.kilnJobId}`) : '—', r.createdAt ? ago(r.createdAt) : '—', r.lastError ?? '']),
            { empty: 'No runner is live.', wide: [2, 5, 6] },
          ),
        );
      } catch (e) {
        if (e instanceof ApiError && e.status === 404) return h('p', {}, 'GitHub is not configured on this server (see `kiln github` and docs/ARCHITECTURE.md).');
        throw e;
      }
    });
  void load();
  const reload = throttle(() => void load(), 2000);
  return { title: 'GitHub', el, onDelta: (d) => d.github && reload() };
}
