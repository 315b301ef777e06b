/**
 * The dashboard's live feed: bus events coalesced into one message per tick (500 ms), serialised once and
 * written to every connected dashboard as a server-sent event. A viewer costs one socket write per tick,
 * whatever the job rate; pages refetch what changed (throttled in the browser). Nothing is collected
 * while no dashboard is connected.
 */
import type { ServerResponse } from 'node:http';
import type { ServerEventBus } from '../events.ts';
import type { LiveDelta } from '../../core/http-contract.ts';

export type { LiveDelta };

export interface LiveSource {
  events: ServerEventBus;
  /** GitHub events, when GitHub is configured. */
  onGitHub?: (fn: () => void) => () => void;
}

const MAX_JOBS = 500;

export interface LiveHub {
  add(res: ServerResponse): void;
  readonly clients: number;
  close(): void;
}

export function makeLiveHub(src: LiveSource, tickMs = 500): LiveHub {
  const clients = new Set<ServerResponse>();
  let d: LiveDelta | undefined;
  const delta = () => (d ??= { jobs: [], moreJobs: false, submitted: 0, logs: [], hosts: [], github: false });
  const jobStates = new Map<number, { id: number; state: string; tenant: string }>();
  const logIds = new Set<number>();
  let offs: (() => void)[] = [];
  let timer: NodeJS.Timeout | undefined;
  let beat = 0;

  const subscribe = () => {
    const e = src.events;
    offs = [
      e.on('job.submitted', () => (delta().submitted += 1)),
      e.on('job.state', (x) => {
        delta();
        if (jobStates.size < MAX_JOBS || jobStates.has(x.job.id)) jobStates.set(x.job.id, { id: x.job.id, state: x.to, tenant: x.job.tenant });
        else delta().moreJobs = true;
      }),
      e.on('job.logs', (x) => {
        delta();
        if (logIds.size < MAX_JOBS) logIds.add(x.jobId);
      }),
      e.on('host.state', (x) => delta().hosts.push({ id: x.hostId, name: x.name, state: x.state, event: 'state' })),
      e.on('host.connected', (x) => delta().hosts.push({ id: x.hostId, name: x.name, event: 'connected' })),
      e.on('host.disconnected', (x) => delta().hosts.push({ id: x.hostId, name: x.name, event: 'disconnected' })),
      e.on('host.status', (x) => delta().hosts.push({ id: x.hostId, name: x.name, event: 'status' })),
    ];
    if (src.onGitHub) offs.push(src.onGitHub(() => (delta().github = true)));
    timer = setInterval(flush, tickMs);
    timer.unref();
  };
  const unsubscribe = () => {
    for (const off of offs) off();
    offs = [];
    clearInterval(timer);
    d = undefined;
    jobStates.clear();
    logIds.clear();
  };
  const send = (text: string) => {
    for (const res of clients) if (!res.writableEnded) res.write(text);
  };
  function flush() {
    if (!d) {
      // a comment every 15 s keeps proxies from closing an idle stream
      if (++beat * tickMs >= 15_000) {
        beat = 0;
        send(': keep-alive\n\n');
      }
      return;
    }
    const out: LiveDelta = { ...d, jobs: [...jobStates.values()], logs: [...logIds] };
    d = undefined;
    jobStates.clear();
    logIds.clear();
    send(`event: delta\ndata: ${JSON.stringify(out)}\n\n`);
  }

  return {
    get clients() {
      return clients.size;
    },
    add(res) {
      if (clients.size === 0) subscribe();
      clients.add(res);
      res.write(`event: hello\ndata: {}\n\n`);
      res.on('close', () => {
        clients.delete(res);
        if (clients.size === 0) unsubscribe();
      });
    },
    close() {
      for (const res of clients) res.end();
      clients.clear();
      unsubscribe();
    },
  };
}
