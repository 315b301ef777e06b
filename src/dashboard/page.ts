/// <reference lib="dom" />
import type { Api, LiveDelta } from './api.ts';

export interface PageContext {
  api: Api;
  /** Query parameters of the route (#/jobs?state=running). */
  params: URLSearchParams;
  /** Path segments after the page name (#/jobs/12 → ['12']). */
  rest: string[];
  navigate(hash: string): void;
  /** Tells screen readers and the status line what happened. */
  announce(text: string): void;
}

export interface Page {
  title: string;
  el: HTMLElement;
  /** Called with each live delta while the page is shown. */
  onDelta?(d: LiveDelta): void;
  close?(): void;
}

/** Draws what `load` returns into `target` (an error as an alert); `undefined` leaves the target as it is (a newer load draws). */
export async function loadInto(target: HTMLElement, load: () => Promise<Node | undefined>): Promise<void> {
  try {
    const node = await load();
    if (node === undefined) return;
    target.replaceChildren(node);
    target.setAttribute('aria-busy', 'false');
  } catch (e) {
    const p = document.createElement('p');
    p.className = 'error';
    p.setAttribute('role', 'alert');
    p.textContent = e instanceof Error ? e.message : String(e);
    target.replaceChildren(p);
  }
}
