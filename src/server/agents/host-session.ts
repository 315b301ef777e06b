/**
 * A host's session on the server, from the agent's messages about the host itself: `hello` (register the
 * host, reconcile what it runs against the store, `welcome`, launch what was placed meanwhile), its status
 * (the registry mirror, warm-start snapshots, the caches it holds) and its power (going to sleep, a sleep that failed).
 */
import type { AgentMessageOf, HostCacheMsg } from '../../core/agent-protocol.ts';
import { CLOSE_HOST_REFUSED, PROTOCOL_VERSION } from '../../core/agent-protocol.ts';
import { isKilnError } from '../../core/errors.ts';
import { launchSpecOf } from '../../core/job.ts';
import { hostStates, registerHost, setHostCaches, setHostMirror } from '../../store/hosts.ts';
import { activeJobsOnHosts, getJob } from '../../store/jobs.ts';
import { markAsleep, recordPowerError } from '../../store/power.ts';
import type { Connection } from './agent-connection.ts';
import type { GatewayDeps } from './agent-gateway.ts';
import { ActiveJobs, type HostLink } from './host-registry.ts';
import { applyPhase, applyResult } from './job-reports.ts';

const cacheVersions = (caches: HostCacheMsg[]): Map<string, string> => new Map(caches.flatMap((c) => (c.version ? [[c.key, c.version] as const] : [])));

export async function hello(deps: GatewayDeps, c: Connection, msg: AgentMessageOf<'hello'>): Promise<void> {
  const { ctx, registry } = deps;
  let registered: Awaited<ReturnType<typeof registerHost>>;
  try {
    registered = await registerHost(ctx.store.db, msg.host, ctx.serverId, msg.mirror, {
      ...(msg.credential ? { credential: msg.credential } : {}),
      policy: ctx.options.hostPolicy,
    }, msg.power);
  } catch (e) {
    if (!isKilnError(e) || !e.code.startsWith('host.')) throw e;
    // Another machine using this host's name, or a capacity claim past what it registered with: refused,
    // and the agent is told not to retry (an operator has to act).
    c.closed = true;
    ctx.metrics.agentProtocolErrors.inc({ code: e.code });
    ctx.log.warn({ code: e.code, msg: e.message, host: msg.host.name }, 'host refused');
    ctx.events.emit('agent.rejected', { code: e.code, message: e.message });
    c.send({ type: 'error', code: e.code, message: `${e.message}${e.hint ? ` (${e.hint})` : ''}`.slice(0, 1000) });
    c.close(CLOSE_HOST_REFUSED, e.code.slice(0, 100));
    return;
  }
  const host = registered.host;
  if (msg.caches) await setHostCaches(ctx.store.db, host.id, ctx.serverId, msg.caches);
  c.connectedAt = host.connectedAt;
  const hlog = ctx.log.child({ hostId: host.id, host: host.name });
  const l: HostLink = {
    hostId: host.id,
    name: host.name,
    arch: host.arch,
    labels: host.labels,
    capacity: host.capacity,
    active: new ActiveJobs(),
    stopping: new Set(),
    schedulable: host.state === 'online' && !host.cordoned,
    ready: false,
    ...(msg.snapshots ? { snapshots: msg.snapshots } : {}),
    ...(msg.images ? { images: msg.images } : {}),
    ...(msg.caches ? { caches: new Set(msg.caches.map((x) => x.key)), cacheVersions: cacheVersions(msg.caches) } : {}),
    ...(msg.cacheTransfer !== undefined ? { cacheTransfer: msg.cacheTransfer } : {}),
    send: c.send,
    sendBinary: c.sendBinary,
    bufferedBytes: c.bufferedBytes,
    close: c.close,
  };
  c.link = l;
  // A stale connection of the same host on this replica is retired before reconciling, so nothing is
  // launched through it meanwhile.
  const stale = registry.get(host.id);
  if (stale && stale !== l) {
    registry.remove(stale);
    stale.ready = false;
    stale.close(4000, 'replaced by a newer connection from the same host');
  }
  // `welcome` goes out only after the host's jobs are registered below: the agent resends the output it
  // holds right after it, and output of a job not registered yet would be dropped.
  // 1. Results the agent finished while disconnected.
  for (const r of msg.finished) await applyResult(deps, l, r);
  // 2. What the store says runs there versus what the agent runs.
  const running = new Map(msg.running.map((r) => [r.jobId, r]));
  const kept = new Set<number>();
  for (const j of await activeJobsOnHosts(ctx.store.db, [host.id])) {
    const a = running.get(j.id);
    if (!a || a.attempt !== j.attempt) {
      const lost = await deps.jobs.lose(j.id, j.attempt, 'the host came back without it');
      if (lost) hlog.warn({ jobId: j.id, requeued: lost.requeued }, 'job lost on its host');
      continue;
    }
    kept.add(j.id);
    l.active.set(j.id, { attempt: j.attempt, cpus: j.cpus, memoryBytes: j.memoryBytes, diskBytes: j.diskBytes });
    if (a.phase === 'running' && j.state !== 'running') await applyPhase(deps, l, j.id, j.attempt, 'running');
    else if (a.phase === 'booting' && j.state === 'placed') await applyPhase(deps, l, j.id, j.attempt, 'booting');
    if (j.cancelRequested) {
      l.stopping.add(j.id);
      c.send({ type: 'stop', jobId: j.id, attempt: j.attempt, reason: 'cancelled' });
    }
  }
  // 3. VMs the server does not know about are killed.
  for (const r of msg.running) {
    if (kept.has(r.jobId)) continue;
    hlog.warn({ jobId: r.jobId, attempt: r.attempt }, 'agent runs a job the server does not place there; stopping it');
    c.send({ type: 'stop', jobId: r.jobId, attempt: r.attempt, reason: 'unknown to the server' });
  }
  c.send({ type: 'welcome', protocol: PROTOCOL_VERSION, hostId: host.id, hostName: host.name, serverId: ctx.serverId, ...(registered.issued ? { credential: registered.issued } : {}) });
  const old = registry.add(l);
  if (old) old.close(4000, 'replaced by a newer connection from the same host');
  l.ready = true;
  // A scheduling pass that was under way during the reconcile may have placed jobs here whose launch
  // had nowhere to go: launch them now (agents ignore a repeated launch).
  for (const j of await activeJobsOnHosts(ctx.store.db, [host.id])) {
    if (l.active.has(j.id)) continue;
    const job = await getJob(ctx.store.db, j.id);
    if (!job || job.state !== 'placed' || job.attempt !== j.attempt) continue;
    l.active.set(j.id, { attempt: j.attempt, cpus: j.cpus, memoryBytes: j.memoryBytes, diskBytes: j.diskBytes });
    c.send({ type: 'launch', jobId: j.id, attempt: j.attempt, spec: launchSpecOf(job) });
  }
  ctx.metrics.hostsConnected.set(registry.links.size);
  hlog.info({ arch: host.arch, cpus: host.capacity.cpus, kept: kept.size }, 'agent connected');
  deps.power?.connected(host.id, host.woke);
  if (host.woke) hlog.info({ latencyMs: Math.round(host.woke.latencyMs), reason: host.woke.reason }, 'the host woke');
  ctx.events.emit('host.connected', { hostId: host.id, name: host.name });
  ctx.events.emit('host.state', { hostId: host.id, name: host.name, state: host.state });
  deps.scheduler.kick();
}

/** The agent drained for a sleep request and is about to run its sleep command. */
export async function sleeping(deps: GatewayDeps, c: Connection, msg: AgentMessageOf<'host.sleeping'>): Promise<void> {
  const { ctx } = deps;
  if (!c.link) return;
  const l = c.link;
  l.schedulable = false;
  if (!(await markAsleep(ctx.store.db, l.hostId, ctx.serverId, msg.requestId, msg.power))) return;
  c.wentToSleep = true;
  c.log().info('the host is going to sleep');
  ctx.events.emit('power.asleep', { hostId: l.hostId, name: l.name });
  ctx.events.emit('host.state', { hostId: l.hostId, name: l.name, state: 'asleep' });
}

/** The host's sleep command failed: recorded, and the host takes jobs again if nothing else holds it. */
export async function powerError(deps: GatewayDeps, c: Connection, msg: AgentMessageOf<'power.error'>): Promise<void> {
  const { ctx } = deps;
  if (!c.link) return;
  const l = c.link;
  await recordPowerError(ctx.store.db, l.hostId, msg.action, msg.message);
  c.log().error({ code: msg.code, msg: msg.message }, 'the host could not go to sleep');
  ctx.events.emit('power.error', { hostId: l.hostId, name: l.name, action: msg.action, message: msg.message });
  const [h] = await hostStates(ctx.store.db, [l.hostId]);
  if (h && h.state === 'online' && !h.cordoned && h.serverId === ctx.serverId) {
    l.schedulable = true;
    deps.scheduler.kick();
  }
}

export async function hostStatus(deps: GatewayDeps, c: Connection, msg: AgentMessageOf<'host.status'>): Promise<void> {
  const { ctx } = deps;
  if (!c.link) return;
  const l = c.link;
  if (msg.snapshots) l.snapshots = msg.snapshots;
  if (msg.images) l.images = msg.images;
  if (msg.caches) {
    l.caches = new Set(msg.caches.map((x) => x.key));
    l.cacheVersions = cacheVersions(msg.caches);
    await setHostCaches(ctx.store.db, l.hostId, ctx.serverId, msg.caches);
  }
  if (!(await setHostMirror(ctx.store.db, l.hostId, ctx.serverId, msg.mirror ?? null))) return;
  ctx.events.emit('host.status', { hostId: l.hostId, name: l.name, mirror: msg.mirror ?? null });
}
