/// <reference lib="dom" />
/**
 * The kiln dashboard (browser side). Signs in with a kiln token (kept in this tab's sessionStorage only),
 * routes by the URL's hash, keeps one live feed (/v1/live) and hands each delta to the page on screen.
 * Pages fetch the ordinary read API; nothing reloads the document.
 */
import { Api, ApiError } from './api.ts';
import { h } from './dom.ts';
import type { Page, PageContext } from './page.ts';
import { fleetPage } from './pages/fleet.ts';
import { githubPage } from './pages/github.ts';
import { jobPage } from './pages/job.ts';
import { jobsPage } from './pages/jobs.ts';
import { queuePage } from './pages/queue.ts';
import { usagePage } from './pages/usage.ts';

const PAGES: Record<string, { label: string; make: (ctx: PageContext) => Page }> = {
  fleet: { label: 'Fleet', make: fleetPage },
  queue: { label: 'Queue', make: queuePage },
  jobs: { label: 'Jobs', make: (ctx) => (ctx.rest.length ? jobPage(ctx) : jobsPage(ctx)) },
  github: { label: 'GitHub', make: githubPage },
  usage: { label: 'Usage', make: usagePage },
};
const TOKEN_KEY = 'kiln.token';
const root = document.getElementById('app')!;
const status = h('p', { class: 'sr-only', role: 'status', 'aria-live': 'polite' });

function signIn(message?: string): void {
  const error = h('p', { class: 'error', role: 'alert', id: 'signin-error' }, message ?? '');
  const input = h('input', { id: 'token', name: 'token', type: 'password', autocomplete: 'current-password', required: true, 'aria-describedby': 'token-help signin-error', spellcheck: 'false' });
  const form = h(
    'form',
    {
      class: 'signin',
      onsubmit: async (e: Event) => {
        e.preventDefault();
        const token = input.value.trim();
        const api = new Api(token);
        try {
          const me = await api.get<{ name: string; role: string }>('/v1/whoami');
          sessionStorage.setItem(TOKEN_KEY, token);
          start(api, me);
        } catch (err) {
          error.textContent = err instanceof ApiError ? `Sign-in refused: ${err.message}` : `Sign-in failed: ${(err as Error).message}`;
          input.focus();
        }
      },
    },
    h('h1', {}, 'kiln'),
    h('label', { for: 'token' }, 'kiln token'),
    input,
    h('p', { id: 'token-help', class: 'muted' }, 'A token made with `kiln tokens create --role viewer` (or any API token). It stays in this browser tab only.'),
    h('button', { type: 'submit' }, 'Sign in'),
    error,
  );
  root.replaceChildren(h('main', { id: 'main' }, form), status);
  input.focus();
}

function start(api: Api, me: { name: string; role: string }): void {
  const nav = h('nav', { 'aria-label': 'pages' }, h('ul', {}, Object.entries(PAGES).map(([k, p]) => h('li', {}, h('a', { href: `#/${k}`, 'data-page': k }, p.label)))));
  const liveDot = h('span', { class: 'live off', 'data-live': 'off' }, 'connecting');
  const main = h('main', { id: 'main', tabindex: -1 });
  const signOut = h('button', { type: 'button', class: 'link', onclick: () => (sessionStorage.removeItem(TOKEN_KEY), location.reload()) }, 'Sign out');
  root.replaceChildren(
    h('a', { class: 'skip', href: '#main', onclick: (e: Event) => (e.preventDefault(), main.focus()) }, 'Skip to content'),
    h('header', {}, h('span', { class: 'brand' }, 'kiln'), nav, h('span', { class: 'who' }, liveDot, ` ${me.name} (${me.role}) `, signOut)),
    main,
    status,
  );
  let page: Page | undefined;
  const announce = (t: string) => (status.textContent = t);
  const route = () => {
    const [path = '', query = ''] = location.hash.replace(/^#\/?/, '').split('?');
    const [name = 'fleet', ...rest] = path.split('/').filter(Boolean);
    const def = PAGES[name] ?? PAGES.fleet!;
    page?.close?.();
    page = def.make({ api, params: new URLSearchParams(query), rest, navigate: (hash) => (location.hash = hash), announce });
    for (const a of nav.querySelectorAll('a')) a.toggleAttribute('aria-current', a.dataset.page === (PAGES[name] ? name : 'fleet'));
    document.title = `${page.title} · kiln`;
    main.replaceChildren(page.el);
    announce(`${page.title} page`);
  };
  window.addEventListener('hashchange', route);
  route();
  api.live(
    new AbortController().signal,
    (d) => page?.onDelta?.(d),
    (up) => {
      liveDot.className = `live ${up ? 'on' : 'off'}`;
      liveDot.dataset.live = up ? 'on' : 'off';
      liveDot.textContent = up ? 'live' : 'reconnecting';
    },
  );
}

const saved = sessionStorage.getItem(TOKEN_KEY);
if (saved) {
  const api = new Api(saved);
  api.get<{ name: string; role: string }>('/v1/whoami').then(
    (me) => start(api, me),
    () => signIn('Your saved token no longer works: sign in again.'),
  );
} else signIn();
