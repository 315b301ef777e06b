/// <reference lib="dom" />
import { duration, gib, h, table, throttle } from '../dom.ts';
import { loadInto, type Page, type PageContext } from '../page.ts';

interface QueueOut {
  groups: { tenant: string; labels: string[]; arch: string; count: number; waitedSeconds: number }[];
  jobs: { id: number; tenant: string; arch: string; cpus: number; memoryBytes: number; labels: string[]; waitedSeconds: number; why: { code: string; message: string } }[];
}

export function queuePage(ctx: PageContext): Page {
  const body = h('div', { 'aria-busy': 'true' }, h('p', {}, 'Loading the queue…'));
  const el = h('section', { 'aria-labelledby': 'queue-h' }, h('h2', { id: 'queue-h' }, 'Queue'), body);
  const load = () =>
    loadInto(body, async () => {
      const q = await ctx.api.get<QueueOut>('/v1/queue');
      const total = q.groups.reduce((a, g) => a + g.count, 0);
      return h(
        'div',
        {},
        h('p', { class: 'stats' }, h('strong', { 'data-queued': total }, total), ' jobs waiting'),
        table(
          'Waiting jobs by label set and tenant',
          ['Tenant', 'Labels', 'Arch', 'Waiting', 'Oldest waited'],
          q.groups.map((g) => [g.tenant, g.labels.join(', ') || '(none)', g.arch, g.count, duration(g.waitedSeconds)]),
          { empty: 'Nothing is waiting.' },
        ),
        table(
          'Oldest waiting jobs and why each is not placed',
          ['Job', 'Tenant', 'Size', 'Waited', 'Why not placed'],
          q.jobs.map((j) => [
            h('a', { href: `#/jobs/${j.id}` }, `#${j.id}`),
            j.tenant,
            `${j.arch} · ${j.cpus} CPU · ${gib(j.memoryBytes)}`,
            duration(j.waitedSeconds),
            h('span', { class: `why why-${j.why.code}`, title: j.why.code }, j.why.message),
          ]),
          { empty: 'Nothing is waiting.' },
        ),
      );
    });
  void load();
  const reload = throttle(() => void load(), 2000);
  return { title: 'Queue', el, onDelta: (d) => (d.jobs.length || d.submitted || d.hosts.length) && reload() };
}
