/// <reference lib="dom" />
import { ago, badge, h, table, throttle } from '../dom.ts';
import { loadInto, type Page, type PageContext } from '../page.ts';

export interface JobOut {
  id: number;
  tenant: string;
  state: string;
  attempt: number;
  requirements: { arch: string; cpus: number; memoryBytes: number; diskBytes: number; hostLabels: string[] };
  labels: string[];
  image: string;
  command: string[];
  hostId: number | null;
  exitCode: number | null;
  error: { code: string; message: string } | null;
  createdAt: string;
  finishedAt: string | null;
}

export const JOBS_SHOWN = 100;
const FINAL = new Set(['succeeded', 'failed', 'cancelled', 'timed_out', 'lost']);
export const JOBS_MAX = 500;

const STATES = ['', 'queued', 'placed', 'booting', 'running', 'succeeded', 'failed', 'cancelled', 'timed_out', 'lost'];

export function jobsPage(ctx: PageContext): Page {
  const state = ctx.params.get('state') ?? '';
  const tenant = ctx.params.get('tenant') ?? '';
  const text = ctx.params.get('q') ?? '';
  let jobs: JobOut[] = [];
  // The newest JOBS_SHOWN at first, up to JOBS_MAX on "Show up to 500": the list is asked for again (at most
  // every 2 s) while new jobs come, and each row asked for is server CPU per viewer (bench:dashboard).
  let limit = JOBS_SHOWN;
  const apply = (e: Event) => {
    e.preventDefault();
    const f = new FormData(e.target as HTMLFormElement);
    const p = new URLSearchParams();
    for (const k of ['q', 'state', 'tenant']) {
      const v = String(f.get(k) ?? '').trim();
      if (v) p.set(k, v);
    }
    ctx.navigate(`#/jobs${p.size ? `?${p}` : ''}`);
  };
  const form = h(
    'form',
    { class: 'filters', role: 'search', onsubmit: apply },
    h('label', {}, 'Search ', h('input', { name: 'q', type: 'search', value: text, placeholder: 'id, command, label, tenant' })),
    h('label', {}, 'State ', h('select', { name: 'state' }, STATES.map((s) => h('option', { value: s, selected: s === state }, s || 'any')))),
    h('label', {}, 'Tenant ', h('input', { name: 'tenant', value: tenant, size: 10 })),
    h('button', { type: 'submit' }, 'Filter'),
  );
  const body = h('div', { 'aria-busy': 'true' }, h('p', {}, 'Loading jobs…'));
  const el = h('section', { 'aria-labelledby': 'jobs-h' }, h('h2', { id: 'jobs-h' }, 'Jobs'), form, body);
  const render = () =>
    table(
      `Jobs, newest first${text ? ` matching “${text}”` : ''}`,
      ['Job', 'State', 'Tenant', 'Labels / size', 'Command', 'Created', 'Exit'],
      jobs.map((j) => [
        h('a', { href: `#/jobs/${j.id}` }, `#${j.id}`),
        h('span', { 'data-job-state': j.id }, badge(j.state)),
        j.tenant,
        j.labels.join(', ') || `${j.requirements.arch} ${j.requirements.cpus} CPU`,
        h('code', { class: 'cmd' }, j.command.join(' ').slice(0, 120)),
        ago(j.createdAt),
        h('span', { 'data-job-exit': j.id }, String(j.exitCode ?? (j.error ? j.error.code : ''))),
      ]),
      { empty: 'No jobs match.', wide: [2, 3, 5] },
    );
  // Loads may overlap (a reload from the feed, the button): only the newest one asked for draws, so an older
  // answer that arrives last cannot put back fewer rows.
  let loads = 0;
  let staleAnswers = 0;
  const load = () => {
    const mine = ++loads;
    return loadInto(body, async () => {
      const p = new URLSearchParams({ limit: String(limit) });
      if (state) p.set('state', state);
      if (tenant) p.set('tenant', tenant);
      // Searched by the server over every stored job, not only the 500 newest.
      if (text) p.set('q', text);
      // An answer to an older request than the newest is not drawn, nor is its failure (it says nothing of the
      // list drawn); such answers are counted on the page (tests wait on that rather than on time).
      const stale = () => {
        el.setAttribute('data-jobs-stale', String(++staleAnswers));
        return undefined;
      };
      let r: { jobs: JobOut[]; next: number | null };
      try {
        r = await ctx.api.get<{ jobs: JobOut[]; next: number | null }>(`/v1/jobs?${p}`);
      } catch (e) {
        if (mine !== loads) return stale();
        throw e;
      }
      if (mine !== loads) return stale();
      jobs = r.jobs;
      // More than drawn: the server says where older jobs go on (`next`), whether the page ended at the limit
      // or at its byte cap (large jobs).
      return h(
        'div',
        {},
        render(),
        r.next !== null
          ? h(
              'p',
              { 'data-jobs-more': String(limit) },
              `Showing the newest ${jobs.length} jobs. `,
              limit < JOBS_MAX
                ? h('button', { type: 'button', onclick: () => ((limit = JOBS_MAX), void load()) }, `Show up to ${JOBS_MAX}`)
                : 'Filter or search to find older ones.',
            )
          : null,
      );
    });
  };
  void load();
  // A job drawn here that changes state is redrawn in place from the live feed (every 500 ms tick); the list
  // is asked for again, at most every 2 s, only for what the feed cannot say: new jobs, or more than it carries.
  const reload = throttle(() => void load(), 2000);
  return {
    title: 'Jobs',
    el,
    onDelta(d) {
      let unknown = d.submitted > 0 || d.moreJobs;
      const byId = new Map(jobs.map((j) => [j.id, j]));
      for (const x of d.jobs) {
        const j = byId.get(x.id);
        if (!j) {
          // Not drawn: only a job this page's filters could show makes it ask again.
          if (!(tenant && x.tenant !== tenant) && !(state && x.state !== state)) unknown = true;
          continue;
        }
        if (j.state === x.state) continue;
        j.state = x.state;
        const cell = el.querySelector(`[data-job-state="${x.id}"]`);
        if (cell) cell.replaceChildren(badge(x.state));
        // Asked again: a job that ended (its exit code and error are drawn too, and a search may match them),
        // and one a state filter no longer holds.
        if (FINAL.has(x.state) || (state && x.state !== state)) unknown = true;
      }
      if (unknown) reload();
    },
  };
}
