/// <reference lib="dom" />
import uPlot from 'uplot';
import { duration, h, table, throttle } from '../dom.ts';
import { loadInto, type Page, type PageContext } from '../page.ts';

interface UsageOut {
  period: string;
  by: string;
  bucketSeconds: number;
  since: string;
  series: { bucket: string; key: string; jobs: number; failed: number; vmMinutes: number; waitSeconds: number }[];
  slowest: { id: number; tenant: string; state: string; labels: string[]; command: string[]; repo: string | null; workflow: string | null; runSeconds: number; waitSeconds: number }[];
  failing: { what: string; total: number; failed: number }[];
}

const MEASURES = { jobs: 'Jobs', vmMinutes: 'VM-minutes', waitSeconds: 'Queue time (s)' } as const;
type Measure = keyof typeof MEASURES;
// Colour-blind-safe palette (Okabe-Ito), then greys.
const PALETTE = ['#0072B2', '#E69F00', '#009E73', '#CC79A7', '#56B4E9', '#D55E00', '#F0E442', '#000000', '#999999'];

export function usagePage(ctx: PageContext): Page {
  const period = ctx.params.get('period') ?? 'day';
  const by = ctx.params.get('by') ?? 'repository';
  const measure = (ctx.params.get('measure') ?? 'jobs') as Measure;
  const go = (e: Event) => {
    const f = new FormData((e.target as HTMLElement).closest('form')!);
    ctx.navigate(`#/usage?${new URLSearchParams({ period: String(f.get('period')), by: String(f.get('by')), measure: String(f.get('measure')) })}`);
  };
  const select = (name: string, label: string, value: string, options: Record<string, string>) =>
    h('label', {}, `${label} `, h('select', { name, onchange: go }, Object.entries(options).map(([v, t]) => h('option', { value: v, selected: v === value }, t))));
  const exportCsv = async () => {
    const blob = await ctx.api.blob(`/v1/reports/usage.csv?period=${period}`);
    const a = h('a', { href: URL.createObjectURL(blob), download: `kiln-usage-${period}.csv` });
    document.body.append(a);
    a.click();
    a.remove();
    ctx.announce('CSV exported');
  };
  const form = h(
    'form',
    { class: 'filters', onsubmit: (e: Event) => e.preventDefault() },
    select('period', 'Over', period, { day: 'a day', week: 'a week', month: 'a month' }),
    select('by', 'By', by, { repository: 'repository', organization: 'organization', user: 'user', label: 'label set', tenant: 'tenant' }),
    select('measure', 'Show', measure, MEASURES),
    h('button', { type: 'button', onclick: () => void exportCsv() }, 'Export CSV'),
  );
  const body = h('div', { 'aria-busy': 'true' }, h('p', {}, 'Loading usage…'));
  const el = h('section', { 'aria-labelledby': 'usage-h' }, h('h2', { id: 'usage-h' }, 'Usage'), form, body);
  let plot: uPlot | undefined;
  const ro = new ResizeObserver(() => plot?.setSize({ width: Math.max(280, body.clientWidth - 8), height: 280 }));
  ro.observe(body);

  const load = () =>
    loadInto(body, async () => {
      const u = await ctx.api.get<UsageOut>(`/v1/reports/usage?period=${period}&by=${by}`);
      const since = Math.floor(new Date(u.since).getTime() / 1000 / u.bucketSeconds) * u.bucketSeconds;
      const xs: number[] = [];
      for (let t = since; t <= Date.now() / 1000; t += u.bucketSeconds) xs.push(t);
      const keys = [...new Set(u.series.map((s) => s.key))];
      const idx = new Map(xs.map((x, i) => [x, i]));
      const ys = keys.map(() => xs.map(() => 0));
      const totals = new Map<string, { jobs: number; failed: number; vmMinutes: number; waitSeconds: number }>();
      for (const s of u.series) {
        const i = idx.get(new Date(s.bucket).getTime() / 1000);
        if (i !== undefined) ys[keys.indexOf(s.key)]![i]! += s[measure];
        const t = totals.get(s.key) ?? { jobs: 0, failed: 0, vmMinutes: 0, waitSeconds: 0 };
        t.jobs += s.jobs;
        t.failed += s.failed;
        t.vmMinutes += s.vmMinutes;
        t.waitSeconds += s.waitSeconds;
        totals.set(s.key, t);
      }
      const chartBox = h('figure', { class: 'chart', 'aria-label': `${MEASURES[measure]} per ${u.bucketSeconds / 3600} h by ${by}; the table below has the same figures` });
      plot?.destroy();
      plot = undefined;
      if (keys.length > 0) {
        plot = new uPlot(
          {
            width: Math.max(280, body.clientWidth - 8),
            height: 280,
            series: [{}, ...keys.map((k, i) => ({ label: k, stroke: PALETTE[i % PALETTE.length]!, width: 2, points: { show: true, size: 5 } }))],
            axes: [{}, { label: MEASURES[measure], size: 60 }],
            scales: { x: { time: true } },
          },
          [xs, ...ys],
          chartBox,
        );
      } else chartBox.append(h('p', {}, 'No job finished in this period.'));
      const total = [...totals.values()].reduce((a, t) => a + t.jobs, 0);
      return h(
        'div',
        {},
        h('p', { class: 'stats' }, h('strong', { 'data-usage-total': total }, total), ` jobs finished over the last ${u.period}`),
        chartBox,
        table(
          `Totals by ${by}`,
          [by, 'Jobs', 'Failed', 'VM-minutes', 'Queue time'],
          [...totals.entries()].sort((a, b) => b[1].jobs - a[1].jobs).map(([k, t]) => [k, t.jobs, t.failed, t.vmMinutes.toFixed(2), duration(t.waitSeconds)]),
        ),
        table(
          'Slowest jobs',
          ['Job', 'What', 'State', 'Ran', 'Waited'],
          u.slowest.map((j) => [h('a', { href: `#/jobs/${j.id}` }, `#${j.id}`), j.repo ? `${j.repo} · ${j.workflow ?? ''}` : j.command.join(' ').slice(0, 80), j.state, duration(j.runSeconds), duration(j.waitSeconds)]),
          { empty: 'No job finished in this period.' },
        ),
        table('Most failing', ['What', 'Failed', 'Of'], u.failing.map((f) => [f.what, f.failed, f.total]), { empty: 'Nothing failed in this period.' }),
      );
    });
  void load();
  const reload = throttle(() => void load(), 5000);
  return {
    title: 'Usage',
    el,
    onDelta: (d) => d.jobs.some((j) => ['succeeded', 'failed', 'cancelled', 'timed_out', 'lost'].includes(j.state)) && reload(),
    close: () => {
      ro.disconnect();
      plot?.destroy();
    },
  };
}
