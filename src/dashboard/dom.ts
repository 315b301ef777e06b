/// <reference lib="dom" />
/** Tiny DOM helpers: elements from tag, attributes and children; text is always a text node (never HTML). */
type Child = Node | string | number | null | undefined | false;
type Attrs = Record<string, string | number | boolean | undefined | ((e: Event) => void)>;

export function h<K extends keyof HTMLElementTagNameMap>(tag: K, attrs: Attrs = {}, ...children: (Child | Child[])[]): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === false) continue;
    if (typeof v === 'function') el.addEventListener(k.replace(/^on/, ''), v);
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat()) if (c !== null && c !== undefined && c !== false) el.append(typeof c === 'object' ? c : String(c));
  return el;
}

export const GiB = 1024 ** 3;
export const gib = (b: number) => `${(b / GiB).toFixed(b % GiB === 0 ? 0 : 1)} GiB`;

export function ago(iso: string | null, now = Date.now()): string {
  if (!iso) return '—';
  return `${duration((now - new Date(iso).getTime()) / 1000)} ago`;
}

export function duration(s: number | null): string {
  if (s === null || !Number.isFinite(s)) return '—';
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 90) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  if (s < 5400) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
}

export function badge(state: string): HTMLElement {
  return h('span', { class: `badge st-${state}` }, state);
}

export function table(caption: string, head: string[], rows: (Child | Child[])[][], opts: { empty?: string; wide?: number[] } = {}): HTMLElement {
  const wide = new Set(opts.wide ?? []);
  const cls = (i: number) => (wide.has(i) ? 'wide' : undefined);
  return h(
    'div',
    { class: 'table-wrap' },
    h(
      'table',
      {},
      h('caption', {}, caption),
      h('thead', {}, h('tr', {}, head.map((x, i) => h('th', { scope: 'col', class: cls(i) }, x)))),
      h('tbody', {}, rows.length === 0 ? h('tr', {}, h('td', { colspan: head.length, class: 'empty' }, opts.empty ?? 'Nothing here.')) : rows.map((r) => h('tr', {}, r.map((c, i) => h('td', { class: cls(i) }, c))))),
    ),
  );
}

/** Runs `fn` at most once per `ms`, trailing call kept. */
export function throttle(fn: () => void, ms: number): () => void {
  let last = 0;
  let timer: number | undefined;
  return () => {
    const wait = last + ms - Date.now();
    if (wait <= 0) {
      last = Date.now();
      fn();
    } else if (timer === undefined) {
      timer = window.setTimeout(() => {
        timer = undefined;
        last = Date.now();
        fn();
      }, wait);
    }
  };
}
