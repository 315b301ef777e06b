/// <reference lib="dom" />
import { badge, gib, h, table, throttle, ago } from '../dom.ts';
import { loadInto, type Page, type PageContext } from '../page.ts';

export interface HostOut {
  id: number;
  name: string;
  state: string;
  cordoned: boolean;
  arch: string;
  accel: string;
  capacity: { cpus: number; memoryBytes: number; diskBytes: number };
  used: { cpus: number; memoryBytes: number; diskBytes: number };
  jobs: number;
  labels: string[];
  driver: string;
  agentVersion: string;
  lastSeenAt: string;
  mirror: { state?: string; healthy: boolean; cacheBytes: number } | null;
  /** Warm-start snapshots the host's agent reported: which image versions (digests) it keeps ready. */
  snapshots?: { image: string; digest?: string; arch: string; cpus: number; memoryBytes: number; state: string; uses: number }[] | null;
  /** The image versions the host holds in its store, as its agent reported them. */
  images?: { profile: string; digest: string; arch: string; created?: string; bytes?: number }[] | null;
}

/** The image versions a host holds: `ci sha256:1a2b3c4d5e6f · 0.9 GiB`, one line each, newest first. */
const heldImages = (x: HostOut) =>
  x.images && x.images.length > 0
    ? h(
        'ul',
        { class: 'plain', 'data-host-held': x.name },
        x.images.map((m) =>
          h('li', { title: `${m.digest}${m.created ? ` · built ${m.created}` : ''}` }, `${m.profile} ${m.digest.slice(0, 19)}${m.arch === x.arch ? '' : ` ${m.arch}`}${m.bytes !== undefined ? ` · ${gib(m.bytes)}` : ''}`),
        ),
      )
    : '—';

/** The image versions a host keeps warm: `ci sha256:1a2b3c4d5e6f · 2 CPUs 4 GiB · ready`, one line each. */
const warmImages = (x: HostOut) =>
  x.snapshots && x.snapshots.length > 0
    ? h(
        'ul',
        { class: 'plain', 'data-host-images': x.name },
        x.snapshots.map((s) =>
          h(
            'li',
            { title: s.digest ?? s.image },
            `${s.image.startsWith('sha256:') ? '' : `${s.image} `}${s.digest ? s.digest.slice(0, 19) : ''} · ${s.cpus} CPU${s.cpus === 1 ? "" : "s"} ${gib(s.memoryBytes)} · `,
            badge(s.state),
          ),
        ),
      )
    : '—';

/**
 * Rows drawn at first on a large fleet (a thousand rows of meters took seconds to lay out); the rest on
 * "Show all". Hosts that need a look (not online, or cordoned) come first, so none of them is hidden.
 */
export const FLEET_ROWS_SHOWN = 200;
const needsLook = (x: HostOut) => x.state !== 'online' || x.cordoned;

const meter = (used: number, cap: number, text: string) =>
  h('span', { class: 'meter-cell' }, h('meter', { min: 0, max: cap, value: used, 'aria-label': text }), h('span', {}, text));

export function fleetPage(ctx: PageContext): Page {
  const body = h('div', { 'aria-busy': 'true' }, h('p', {}, 'Loading hosts…'));
  let showAll = false;
  const el = h('section', { 'aria-labelledby': 'fleet-h' }, h('h2', { id: 'fleet-h' }, 'Fleet'), body);
  const load = () =>
    loadInto(body, async () => {
      const { hosts } = await ctx.api.get<{ hosts: HostOut[] }>('/v1/hosts');
      const counts = new Map<string, number>();
      for (const x of hosts) counts.set(x.state, (counts.get(x.state) ?? 0) + 1);
      const cpu = hosts.reduce((a, x) => [a[0]! + x.used.cpus, a[1]! + x.capacity.cpus], [0, 0]);
      const shown = showAll || hosts.length <= FLEET_ROWS_SHOWN ? hosts : [...hosts.filter(needsLook), ...hosts.filter((x) => !needsLook(x))].slice(0, FLEET_ROWS_SHOWN);
      return h(
        'div',
        {},
        h(
          'ul',
          { class: 'stats', 'aria-label': 'hosts by state' },
          h('li', {}, h('strong', {}, hosts.length), ' hosts'),
          ['online', 'draining', 'asleep', 'waking', 'offline'].map((s) => h('li', {}, badge(s), ' ', h('strong', { 'data-state-count': s }, counts.get(s) ?? 0))),
          h('li', {}, h('strong', {}, `${cpu[0]}/${cpu[1]}`), ' CPUs in use'),
        ),
        table(
          'Hosts: CPU and memory in use of capacity, VMs, mirror, image versions held and kept warm',
          ['Host', 'State', 'Arch', 'Accel', 'CPUs', 'Memory', 'VMs', 'Mirror', 'Images', 'Warm images', 'Agent', 'Last seen'],
          shown.map((x) => [
            h('span', { 'data-host': x.name }, x.name),
            h('span', { 'data-host-state': x.name }, badge(x.cordoned && x.state === 'online' ? 'cordoned' : x.state)),
            x.arch,
            x.accel,
            meter(x.used.cpus, x.capacity.cpus, `${x.used.cpus}/${x.capacity.cpus}`),
            meter(x.used.memoryBytes, x.capacity.memoryBytes, `${gib(x.used.memoryBytes)}/${gib(x.capacity.memoryBytes)}`),
            x.jobs,
            x.mirror ? h('span', { class: x.mirror.healthy ? 'ok' : 'bad' }, x.mirror.healthy ? 'healthy' : 'down', ' · ', gib(x.mirror.cacheBytes)) : '—',
            heldImages(x),
            warmImages(x),
            `${x.driver} ${x.agentVersion}`,
            ago(x.lastSeenAt),
          ]),
          { empty: 'No host has joined yet: start one with `kiln agent`.', wide: [3, 7, 8, 9, 10, 11] },
        ),
        shown.length < hosts.length
          ? h(
              'p',
              { 'data-fleet-more': String(hosts.length - shown.length) },
              `Showing ${shown.length} of ${hosts.length} hosts (those that are not online or are cordoned first). `,
              h('button', { type: 'button', onclick: () => ((showAll = true), void load()) }, `Show all ${hosts.length} hosts`),
            )
          : null,
      );
    });
  void load();
  // A host changing state shows within ~0.3 s; capacity in use (jobs coming and going) and the mirrors'
  // periodic reports (every host every 15 s: ~70 a second on a fleet of 1,000) refresh at most every 10 s:
  // on a fleet of 1,000 hosts each listing is ~45 ms of the server's CPU per viewer (bench:dashboard).
  const reload = throttle(() => void load(), 10_000);
  const soon = throttle(() => void load(), 300);
  return {
    title: 'Fleet',
    el,
    onDelta(d) {
      if (d.hosts.some((x) => x.event !== 'status')) soon();
      else if (d.hosts.length > 0 || d.jobs.length > 0) reload();
    },
  };
}
