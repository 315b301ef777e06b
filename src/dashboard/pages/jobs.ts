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

const STATES = ['', 'queued', 'placed', 'booting', 'running', 'succeeded', 'failed', 'cancelled', 'timed_out', 'lost'];

export function jobsPage(ctx: PageContext): Page {
  const state = ctx.params.get('state') ?? '';
  const tenant = ctx.params.get('tenant') ?? '';
  const text = ctx.params.get('q') ?? '';
  let jobs: JobOut[] = [];
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
        j.exitCode ?? (j.error ? j.error.code : ''),
      ]),
      { empty: 'No jobs match.', wide: [2, 3, 5] },
    );
  const load = () =>
    loadInto(body, async () => {
      const p = new URLSearchParams({ limit: '500' });
      if (state) p.set('state', state);
      if (tenant) p.set('tenant', tenant);
      // Searched by the server over every stored job, not only the 500 newest.
      if (text) p.set('q', text);
      jobs = (await ctx.api.get<{ jobs: JobOut[] }>(`/v1/jobs?${p}`)).jobs;
      return render();
    });
  void load();
  const reload = throttle(() => void load(), 1000);
  return {
    title: 'Jobs',
    el,
    onDelta(d) {
      if (d.submitted > 0 || d.moreJobs) return reload();
      let changed = false;
      for (const x of d.jobs) {
        const j = jobs.find((y) => y.id === x.id);
        if (j && j.state !== x.state) {
          j.state = x.state;
          changed = true;
        } else if (!j) changed = true;
      }
      if (changed) reload();
    },
  };
}
