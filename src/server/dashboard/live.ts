/**
 * The dashboard's live feed: bus events coalesced into one message per tick (500 ms) and written to every
 * connected dashboard as a server-sent event. Each viewer sees only its own tenant's jobs, submissions, logs
 * and (for the GitHub tenant) GitHub changes; an admin's token sees every tenant. The message is serialised
 * once per scope (all admins share one), so a viewer costs one socket write per tick, whatever the job rate;
 * a scope with nothing new gets nothing. Hosts are the fleet's, shared by every tenant (as GET /v1/hosts),
 * so every viewer sees host changes. Nothing is collected while no dashboard is connected.
 */
import type { ServerResponse } from 'node:http';
import type { ServerEventBus } from '../events.ts';
import type { LiveDelta } from '../../core/http-contract.ts';

export type { LiveDelta };

export interface LiveSource {
  events: ServerEventBus;
  /** GitHub events, when GitHub is configured. */
  onGitHub?: (fn: () => void) => () => void;
  /** The tenant GitHub's jobs belong to: only its viewers (and admins) hear of GitHub changes. */
  githubTenant?: string;
}

const MAX_JOBS = 500;

/** Who a viewer is: `undefined` is an admin (every tenant), a string confines it to that tenant. */
export type LiveScope = string | undefined;

export interface LiveHub {
  add(res: ServerResponse, scope: LiveScope): void;
  readonly clients: number;
  close(): void;
}

interface TenantDelta {
  jobs: Map<number, { id: number; state: string; tenant: string }>;
  moreJobs: boolean;
  submitted: number;
  logs: Set<number>;
}

export function makeLiveHub(src: LiveSource, tickMs = 500): LiveHub {
  const clients = new Map<ServerResponse, LiveScope>();
  /** What changed this tick, per tenant (each bounded by MAX_JOBS), plus the fleet-wide parts. */
  let perTenant = new Map<string, TenantDelta>();
  let hosts: LiveDelta['hosts'] = [];
  let github = false;
  let dirty = false;
  const of = (tenant: string): TenantDelta => {
    dirty = true;
    let t = perTenant.get(tenant);
    if (!t) perTenant.set(tenant, (t = { jobs: new Map(), moreJobs: false, submitted: 0, logs: new Set() }));
    return t;
  };
  let offs: (() => void)[] = [];
  let timer: NodeJS.Timeout | undefined;
  let beat = 0;

  const host = (h: LiveDelta['hosts'][number]) => {
    dirty = true;
    if (hosts.length < MAX_JOBS) hosts.push(h);
  };
  const subscribe = () => {
    const e = src.events;
    offs = [
      e.on('job.submitted', (x) => (of(x.job.tenant).submitted += 1)),
      e.on('job.state', (x) => {
        const t = of(x.job.tenant);
        if (t.jobs.size < MAX_JOBS || t.jobs.has(x.job.id)) t.jobs.set(x.job.id, { id: x.job.id, state: x.to, tenant: x.job.tenant });
        else t.moreJobs = true;
      }),
      e.on('job.logs', (x) => {
        const t = of(x.tenant);
        if (t.logs.size < MAX_JOBS) t.logs.add(x.jobId);
      }),
      e.on('host.state', (x) => host({ id: x.hostId, name: x.name, state: x.state, event: 'state' })),
      e.on('host.connected', (x) => host({ id: x.hostId, name: x.name, event: 'connected' })),
      e.on('host.disconnected', (x) => host({ id: x.hostId, name: x.name, event: 'disconnected' })),
      e.on('host.status', (x) => host({ id: x.hostId, name: x.name, event: 'status' })),
    ];
    if (src.onGitHub)
      offs.push(
        src.onGitHub(() => {
          dirty = true;
          github = true;
        }),
      );
    timer = setInterval(flush, tickMs);
    timer.unref();
  };
  const reset = () => {
    perTenant = new Map();
    hosts = [];
    github = false;
    dirty = false;
  };
  const unsubscribe = () => {
    for (const off of offs) off();
    offs = [];
    clearInterval(timer);
    reset();
  };
  /** The delta one scope may see, or undefined when nothing in it concerns that scope. */
  const deltaFor = (scope: LiveScope): LiveDelta | undefined => {
    const parts = scope === undefined ? [...perTenant.values()] : perTenant.has(scope) ? [perTenant.get(scope)!] : [];
    const jobs: LiveDelta['jobs'] = [];
    let moreJobs = false;
    let submitted = 0;
    const logs: number[] = [];
    for (const t of parts) {
      moreJobs ||= t.moreJobs;
      submitted += t.submitted;
      for (const j of t.jobs.values()) if (jobs.length < MAX_JOBS) jobs.push(j);
      else moreJobs = true;
      for (const id of t.logs) if (logs.length < MAX_JOBS) logs.push(id);
    }
    const gh = github && (scope === undefined || scope === src.githubTenant);
    if (jobs.length === 0 && !moreJobs && submitted === 0 && logs.length === 0 && hosts.length === 0 && !gh) return undefined;
    return { jobs, moreJobs, submitted, logs, hosts, github: gh };
  };
  const write = (res: ServerResponse, text: string) => {
    if (!res.writableEnded) res.write(text);
  };
  function flush() {
    // a comment every 15 s keeps proxies from closing an idle stream
    if (++beat * tickMs >= 15_000) {
      beat = 0;
      for (const res of clients.keys()) write(res, ': keep-alive\n\n');
    }
    if (!dirty) return;
    const texts = new Map<LiveScope, string | null>();
    for (const [res, scope] of clients) {
      let text = texts.get(scope);
      if (text === undefined) {
        const d = deltaFor(scope);
        texts.set(scope, (text = d ? `event: delta\ndata: ${JSON.stringify(d)}\n\n` : null));
      }
      if (text !== null) write(res, text);
    }
    reset();
  }

  return {
    get clients() {
      return clients.size;
    },
    add(res, scope) {
      if (clients.size === 0) subscribe();
      clients.set(res, scope);
      res.write(`event: hello\ndata: {}\n\n`);
      res.on('close', () => {
        clients.delete(res);
        if (clients.size === 0) unsubscribe();
      });
    },
    close() {
      for (const res of clients.keys()) res.end();
      clients.clear();
      unsubscribe();
    },
  };
}
