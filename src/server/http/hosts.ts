/** Hosts API: list, get, drain, cordon, uncordon, remove. */
import { KilnError } from '../../core/errors.ts';
import { nextHostState } from '../../core/host-state.ts';
import type { Host } from '../../core/host.ts';
import { deleteHost, findHost, listHosts, updateHostFlags } from '../../store/hosts.ts';
import { activeJobsOnHosts } from '../../store/jobs.ts';
import type { ApiDeps } from './deps.ts';
import { pageByBytes } from './listing.ts';
import { defineRoute, type RouteDef } from './routes.ts';
import { API } from '../../core/http-contract.ts';

export function hostRoutes(deps: ApiDeps): RouteDef[] {
  const db = deps.ctx.store.db;
  const need = async (ref: string): Promise<Host> => {
    const h = await findHost(db, ref);
    if (!h) throw new KilnError('host.not_found', `no host named or numbered "${ref}"`, { hint: 'list hosts with `kiln hosts ls`' });
    return h;
  };
  const withUsage = async (hosts: Host[]) => {
    const byHost = new Map<number, Awaited<ReturnType<typeof activeJobsOnHosts>>>();
    for (const j of await activeJobsOnHosts(db, hosts.map((h) => h.id))) {
      const l = byHost.get(j.hostId);
      if (l) l.push(j);
      else byHost.set(j.hostId, [j]);
    }
    return hosts.map((h) => {
      const mine = byHost.get(h.id) ?? [];
      return {
        ...h,
        // Live state of the agent's connection: known only on the replica it is connected to (null elsewhere,
        // and for hosts that keep none).
        snapshots: deps.registry.get(h.id)?.snapshots ?? null,
        images: deps.registry.get(h.id)?.images ?? null,
        jobs: mine.length,
        used: {
          cpus: mine.reduce((s, j) => s + j.cpus, 0),
          memoryBytes: mine.reduce((s, j) => s + j.memoryBytes, 0),
          diskBytes: mine.reduce((s, j) => s + j.diskBytes, 0),
        },
      };
    });
  };
  const change = async (ref: string, what: 'drain' | 'cordon' | 'uncordon') => {
    const h = await need(ref);
    let updated: Host | undefined;
    if (what === 'drain') {
      const state = h.state === 'offline' || h.state === 'asleep' || h.state === 'waking' ? h.state : nextHostState(h.state, { type: 'drain' });
      updated = await updateHostFlags(db, h.id, { drainRequested: true, state });
    } else if (what === 'cordon') {
      updated = await updateHostFlags(db, h.id, { cordoned: true });
    } else {
      const state = h.state === 'draining' ? nextHostState(h.state, { type: 'undrain' }) : h.state;
      updated = await updateHostFlags(db, h.id, { cordoned: false, drainRequested: false, state });
    }
    if (!updated) throw new KilnError('host.not_found', `host "${ref}" was removed meanwhile`);
    const link = deps.registry.get(h.id);
    if (link) link.schedulable = updated.state === 'online' && !updated.cordoned;
    deps.ctx.events.emit('host.state', { hostId: h.id, name: h.name, state: updated.state });
    if (what === 'uncordon') deps.scheduler.kick();
    return updated;
  };
  return [
    defineRoute(
      API.listHosts,
      {
        tag: 'hosts',
        summary:
          'List hosts by name with their state, capacity and what is in use; at most `limit` (default and most 10,000) and 4 MiB of JSON: `next`, when not null, is the `after` that lists the rest',
        permission: 'read',
      },
      async (req) => {
        const q = req.query;
        const { items, next } = await pageByBytes({
          fetchPage: async (cursor: string | undefined, n) => withUsage(await listHosts(db, { after: cursor, limit: n })),
          cursorOf: (h) => h.name,
          toJson: (h) => h,
          limit: q.limit ?? 10_000,
          pageSize: 500,
          ...(q.after !== undefined ? { start: q.after } : {}),
        });
        return { hosts: items, next };
      },
    ),
    defineRoute(API.getHost, { tag: 'hosts', summary: 'One host, by name or id', permission: 'read' }, async (req) => (await withUsage([await need(req.params.ref)]))[0]),
    defineRoute(API.drainHost, { tag: 'hosts', summary: 'Drain a host: no new jobs, running ones finish (survives reconnects)', permission: 'operate' }, (req) =>
      change(req.params.ref, 'drain'),
    ),
    defineRoute(API.cordonHost, { tag: 'hosts', summary: 'Cordon a host: no new jobs; it stays online', permission: 'operate' }, (req) => change(req.params.ref, 'cordon')),
    defineRoute(API.uncordonHost, { tag: 'hosts', summary: 'Undo drain and cordon', permission: 'operate' }, (req) => change(req.params.ref, 'uncordon')),
    defineRoute(
      API.removeHost,
      { tag: 'hosts', summary: 'Forget a host; refused while it runs jobs unless force=true (its agent is disconnected)', permission: 'admin' },
      async (req) => {
        const h = await need(req.params.ref);
        const force = req.query.force === true;
        const active = await activeJobsOnHosts(db, [h.id]);
        if (!force && (active.length > 0 || h.state === 'online' || h.state === 'draining')) {
          throw new KilnError('host.busy', `host ${h.name} is ${h.state} with ${active.length} job(s)`, {
            hint: 'drain it and stop its agent first, or pass --force',
          });
        }
        deps.registry.get(h.id)?.close(4001, 'host removed');
        await deleteHost(db, h.id);
        return { removed: h.name };
      },
    ),
  ];
}
