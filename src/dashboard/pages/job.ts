/// <reference lib="dom" />
import { AnsiParser } from '../ansi.ts';
import { ApiError } from '../api.ts';
import { badge, duration, gib, h, table, throttle } from '../dom.ts';
import { loadInto, type Page, type PageContext } from '../page.ts';
import type { JobOut } from './jobs.ts';

interface Transition {
  attempt: number;
  state: string;
  hostId: number | null;
  detail: string | null;
  at: string;
}
type JobDetail = JobOut & { placedAt: string | null; bootingAt: string | null; runningAt: string | null; transitions: Transition[]; network: string; timeoutMs: number; logTruncated: boolean };
const TERMINAL = new Set(['succeeded', 'failed', 'cancelled', 'timed_out', 'lost']);
const secs = (a: string | null, b: string | null) => (a && b ? Math.max(0, (new Date(b).getTime() - new Date(a).getTime()) / 1000) : null);

export function jobPage(ctx: PageContext): Page {
  const id = Number(ctx.rest[0]);
  const head = h('div', { 'aria-busy': 'true' }, h('p', {}, 'Loading the job…'));
  const github = h('div', {});
  const log = h('pre', { class: 'log', role: 'log', 'aria-live': 'polite', 'aria-label': `output of job ${id}`, tabindex: 0 });
  const logNote = h('p', { class: 'muted', 'data-log-status': '' }, 'Waiting for output…');
  const el = h(
    'section',
    { 'aria-labelledby': 'job-h' },
    h('h2', { id: 'job-h' }, `Job #${id}`),
    head,
    github,
    h('h3', {}, 'Log'),
    logNote,
    log,
  );
  const ac = new AbortController();
  let state = '';
  let hostNames = new Map<number, string>();

  const load = () =>
    loadInto(head, async () => {
      const [j, hosts] = await Promise.all([ctx.api.get<JobDetail>(`/v1/jobs/${id}`), hostNames.size ? null : ctx.api.get<{ hosts: { id: number; name: string }[] }>('/v1/hosts')]);
      if (hosts) hostNames = new Map(hosts.hosts.map((x) => [x.id, x.name]));
      state = j.state;
      const r = j.requirements;
      const steps: [string, string | null, number | null][] = [
        ['queued', j.createdAt, secs(j.createdAt, j.placedAt)],
        ['placed', j.placedAt, secs(j.placedAt, j.runningAt)],
        ['running', j.runningAt, secs(j.runningAt, j.finishedAt)],
        ['done', j.finishedAt, null],
      ];
      return h(
        'div',
        {},
        h(
          'dl',
          { class: 'facts' },
          h('dt', {}, 'State'),
          h('dd', { 'data-job-state': id }, badge(j.state), j.exitCode !== null ? ` exit ${j.exitCode}` : '', j.error ? ` · ${j.error.code}: ${j.error.message}` : ''),
          h('dt', {}, 'Tenant'),
          h('dd', {}, j.tenant),
          h('dt', {}, 'VM size'),
          h('dd', {}, `${r.arch} · ${r.cpus} CPU · ${gib(r.memoryBytes)} memory · ${gib(r.diskBytes)} disk · network ${j.network}`),
          h('dt', {}, 'Host'),
          h('dd', {}, j.hostId === null ? '—' : (hostNames.get(j.hostId) ?? `#${j.hostId}`)),
          h('dt', {}, 'Labels'),
          h('dd', {}, j.labels.join(', ') || '(none)'),
          h('dt', {}, 'Command'),
          h('dd', {}, h('code', {}, j.command.join(' '))),
          h('dt', {}, 'Wait · boot · run'),
          h('dd', {}, `${duration(secs(j.createdAt, j.placedAt))} · ${duration(secs(j.placedAt, j.runningAt))} · ${duration(secs(j.runningAt, j.finishedAt))}`),
        ),
        h('ol', { class: 'timeline', 'aria-label': 'timeline' }, steps.map(([name, at, next]) => h('li', { class: at ? 'done' : 'todo' }, h('strong', {}, name), ' ', at ? new Date(at).toLocaleTimeString() : '—', next !== null ? h('span', { class: 'muted' }, ` (+${duration(next)})`) : ''))),
        table(
          'Every transition',
          ['Attempt', 'State', 'Host', 'At', 'Detail'],
          j.transitions.map((t) => [t.attempt, badge(t.state), t.hostId === null ? '—' : (hostNames.get(t.hostId) ?? `#${t.hostId}`), new Date(t.at).toLocaleTimeString(), t.detail ?? '']),
        ),
      );
    });

  const loadGitHub = async () => {
    try {
      const { runners } = await ctx.api.get<{ runners: { name: string; kilnJobId: number | null; ghJobId: number | null; state: string }[] }>('/v1/github/runners?all=true');
      const runner = runners.find((r) => r.kilnJobId === id);
      if (!runner) return;
      const [{ usage }, { jobs }] = await Promise.all([
        ctx.api.get<{ usage: { jobId: number; repo: string; workflow: string | null; sender: string | null; kilnJobId: number | null }[] }>('/v1/github/usage?limit=10000'),
        ctx.api.get<{ jobs: { jobId: number; runId: number; repo: string; decision: string; reason: { message: string } | null; workflow: string | null }[] }>('/v1/github/jobs?limit=1000'),
      ]);
      const u = usage.find((x) => x.kilnJobId === id) ?? usage.find((x) => x.jobId === runner.ghJobId);
      const gj = jobs.find((x) => x.jobId === (u?.jobId ?? runner.ghJobId));
      github.replaceChildren(
        h('h3', {}, 'GitHub'),
        h(
          'dl',
          { class: 'facts' },
          h('dt', {}, 'Runner'),
          h('dd', {}, `${runner.name} (${runner.state})`),
          h('dt', {}, 'Repository'),
          h('dd', {}, u?.repo ?? gj?.repo ?? '—'),
          h('dt', {}, 'Workflow'),
          h('dd', {}, u?.workflow ?? gj?.workflow ?? '—'),
          h('dt', {}, 'Run'),
          h('dd', {}, gj ? h('a', { href: `https://github.com/${gj.repo}/actions/runs/${gj.runId}`, rel: 'noreferrer', target: '_blank' }, `run ${gj.runId}`) : '—'),
          h('dt', {}, 'Sender'),
          h('dd', {}, u?.sender ?? '—'),
          h('dt', {}, 'Decision'),
          h('dd', {}, gj ? `${gj.decision}${gj.reason ? `: ${gj.reason.message}` : ''}` : '—'),
        ),
      );
    } catch (e) {
      if (!(e instanceof ApiError && e.status === 404)) github.replaceChildren(h('p', { class: 'error' }, `GitHub details: ${(e as Error).message}`));
    }
  };

  const followLog = async () => {
    const parser = new AnsiParser();
    const dec = new TextDecoder();
    let bytes = 0;
    try {
      await ctx.api.lines(`/v1/jobs/${id}/logs?follow=true`, ac.signal, (line) => {
        if (!line) return;
        const m = JSON.parse(line) as { data?: string; stream?: string; end?: boolean; state?: string; logTruncated?: boolean };
        if (m.end) {
          logNote.textContent = `Log complete (${bytes} bytes)${m.logTruncated ? ', truncated at the log limit' : ''}.`;
          return;
        }
        if (m.data === undefined) return;
        const raw = Uint8Array.from(atob(m.data), (c) => c.charCodeAt(0));
        bytes += raw.length;
        const frag = document.createDocumentFragment();
        for (const s of parser.push(dec.decode(raw, { stream: true }))) {
          const span = h('span', { class: [...s.classes, m.stream === 'stderr' ? 'stderr' : '', m.stream === 'kiln' ? 'kiln-note' : ''].filter(Boolean).join(' ') || undefined }, s.text);
          if (s.color) span.style.color = s.color;
          if (s.background) span.style.background = s.background;
          frag.append(span);
        }
        const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
        log.append(frag);
        if (atBottom) log.scrollTop = log.scrollHeight;
        logNote.textContent = `Live: ${bytes} bytes`;
      });
    } catch (e) {
      if (!ac.signal.aborted) logNote.textContent = `The log stream stopped: ${(e as Error).message}`;
    }
  };

  void load();
  void loadGitHub();
  void followLog();
  const reload = throttle(() => void load(), 500);
  return {
    title: `Job #${id}`,
    el,
    onDelta(d) {
      if (d.jobs.some((x) => x.id === id) || (d.moreJobs && !TERMINAL.has(state))) reload();
    },
    close: () => ac.abort(),
  };
}
