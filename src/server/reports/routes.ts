/**
 * Reports API: wait/boot/pickup percentiles over a window, usage over time by a dimension (with the
 * slowest and most failing jobs), the usage records as CSV, and the queue with why each job waits.
 */
import { API } from '../../core/http-contract.ts';
import { KilnError } from '../../core/errors.ts';
import { parseDuration } from '../../core/sizes.ts';
import { jobTimings, labelSetKey } from '../../core/timings.ts';
import { whyWaiting, type FleetHost } from '../../core/why-waiting.ts';
import { listHosts } from '../../store/hosts.ts';
import { activeJobsOnHosts } from '../../store/jobs.ts';
import { listTenants } from '../../store/tenants.ts';
import {
  mostFailing,
  pickupPercentiles,
  queueSnapshot,
  slowestJobs,
  timingPercentiles,
  usageRecords,
  usageSeries,
  type UsageDimension,
  type UsagePoint,
  type UsageRecord,
} from '../../store/reports.ts';
import type { Db } from '../../store/store.ts';
import type { ApiDeps } from '../http/deps.ts';
import { tenantScope } from '../http/auth.ts';
import { defineRoute, type RouteDef } from '../http/routes.ts';

export const PERIODS = { day: { seconds: 86_400, bucket: 3_600 }, week: { seconds: 7 * 86_400, bucket: 6 * 3_600 }, month: { seconds: 30 * 86_400, bucket: 86_400 } } as const;
export type Period = keyof typeof PERIODS;
/** Series beyond this many keys are summed into `(other)`, so a chart stays readable. */
const TOP_KEYS = 8;

/** Keeps the `TOP_KEYS` keys with most jobs; the rest become one `(other)` series. Label keys read as label sets. */
export function topSeries(points: UsagePoint[], by: UsageDimension): UsagePoint[] {
  const name = (k: string) => (by === 'label' ? labelSetKey(JSON.parse(k) as string[]) : k);
  const totals = new Map<string, number>();
  for (const p of points) totals.set(name(p.key), (totals.get(name(p.key)) ?? 0) + p.jobs);
  const keep = new Set([...totals.entries()].sort((a, b) => b[1] - a[1]).slice(0, TOP_KEYS).map(([k]) => k));
  const out = new Map<string, UsagePoint>();
  for (const p of points) {
    const key = keep.has(name(p.key)) ? name(p.key) : '(other)';
    const id = `${p.bucket.getTime()}|${key}`;
    const o = out.get(id) ?? { bucket: p.bucket, key, jobs: 0, failed: 0, vmMinutes: 0, waitSeconds: 0 };
    o.jobs += p.jobs;
    o.failed += p.failed;
    o.vmMinutes += p.vmMinutes;
    o.waitSeconds += p.waitSeconds;
    out.set(id, o);
  }
  return [...out.values()];
}

export const csvCell = (v: unknown): string => {
  const s = v === null || v === undefined ? '' : v instanceof Date ? v.toISOString() : Array.isArray(v) ? v.join(' ') : String(v);
  // Quote always when needed; a leading = + - @ would run as a formula in a spreadsheet.
  const safe = /^[=+\-@]/.test(s) ? `'${s}` : s;
  return /[",\n\r]/.test(safe) ? `"${safe.replace(/"/g, '""')}"` : safe;
};

export const CSV_COLUMNS = [
  'job_id',
  'tenant',
  'state',
  'arch',
  'cpus',
  'memory_bytes',
  'labels',
  'host_id',
  'repository',
  'organization',
  'user',
  'workflow',
  'queued_at',
  'placed_at',
  'running_at',
  'finished_at',
  'wait_seconds',
  'boot_seconds',
  'run_seconds',
  'cache',
  'cache_hit',
  'cache_fetch',
  'cache_fetched_bytes',
  'cache_committed_bytes',
] as const;

/**
 * A usage record's cache columns: the job's cache key, whether it started warm (`hit`), cold (`miss`) or
 * its result said nothing (empty), how a fetch from a peer host ended, and the bytes fetched and committed.
 */
function cacheCells(r: UsageRecord): (string | number | null)[] {
  const o = r.cacheOutcome;
  if (!r.cacheKey) return [null, null, null, null, null];
  return [r.cacheKey, o ? (o.hit ? 'hit' : 'miss') : null, o?.fetch?.outcome ?? null, o?.fetch?.outcome === 'fetched' ? (o.fetch.bytes ?? 0) : null, o?.committed?.bytes ?? null];
}

/** The fleet with what each host uses now (the queue page's reasons and the fleet page both need it). */
export async function fleetWithUsage(db: Db): Promise<(FleetHost & { id: number; jobs: number })[]> {
  const hosts = await listHosts(db);
  const active = await activeJobsOnHosts(
    db,
    hosts.map((h) => h.id),
  );
  const by = new Map<number, { cpus: number; memoryBytes: number; diskBytes: number; jobs: number }>();
  for (const j of active) {
    const u = by.get(j.hostId) ?? { cpus: 0, memoryBytes: 0, diskBytes: 0, jobs: 0 };
    u.cpus += j.cpus;
    u.memoryBytes += j.memoryBytes;
    u.diskBytes += j.diskBytes;
    u.jobs += 1;
    by.set(j.hostId, u);
  }
  return hosts.map((h) => {
    const u = by.get(h.id) ?? { cpus: 0, memoryBytes: 0, diskBytes: 0, jobs: 0 };
    return { id: h.id, name: h.name, state: h.state, cordoned: h.cordoned, arch: h.arch, labels: h.labels, capacity: h.capacity, used: { cpus: u.cpus, memoryBytes: u.memoryBytes, diskBytes: u.diskBytes }, jobs: u.jobs };
  });
}

export function reportRoutes(deps: ApiDeps): RouteDef[] {
  const db = deps.ctx.store.db;
  const periodOf = (q: { period?: Period }) => {
    const p = PERIODS[q.period ?? 'day'];
    return { ...p, since: new Date(Date.now() - p.seconds * 1000) };
  };
  return [
    defineRoute(
      API.timings,
      {
        tag: 'reports',
        summary: 'Wait (queued → placed), boot (placed → running) and GitHub pickup (created_at → in_progress, and its first part created_at → runner online) percentiles over a window, by arch and label set',
        permission: 'read',
      },
      async (req, _reply, token) => {
        const w = req.query.window ?? '1h';
        let ms: number;
        try {
          const days = /^(\d{1,4})d$/.exec(w.trim());
          ms = days ? Number(days[1]) * 86_400_000 : parseDuration(w, 'window');
        } catch (e) {
          throw new KilnError('request.bad_window', `window "${w}" is not a duration`, { hint: 'give a duration such as 15m, 1h or 7d', cause: e });
        }
        if (ms > 3650 * 86_400_000) throw new KilnError('request.bad_window', 'the window may be at most 3650 days', { hint: 'ask for a shorter window' });
        const since = new Date(Date.now() - ms);
        // A non-admin token sees its tenant's jobs only (docs/security.md, Tenancy); GitHub pickup is aggregate only.
        const [jobs, pickup] = await Promise.all([timingPercentiles(db, since, tenantScope(token)), pickupPercentiles(db, since)]);
        return { window: w, since: since.toISOString(), jobs, pickup };
      },
    ),
    defineRoute(
      API.usage,
      {
        tag: 'reports',
        summary: 'Finished jobs, VM-minutes and queue time per time bucket by repository, organization, user, label set or tenant; the slowest and most failing jobs',
        permission: 'read',
      },
      async (req, _reply, token) => {
        const q = req.query;
        const tenant = tenantScope(token);
        const by = q.by ?? 'repository';
        const p = periodOf(q);
        const [series, slowest, failing] = await Promise.all([
          usageSeries(db, { since: p.since, bucketSeconds: p.bucket, by, ...(tenant !== undefined ? { tenant } : {}) }),
          slowestJobs(db, p.since, 10, tenant),
          mostFailing(db, p.since, 10, tenant),
        ]);
        return {
          period: q.period ?? 'day',
          by,
          since: p.since.toISOString(),
          bucketSeconds: p.bucket,
          series: topSeries(series, by).map((s) => ({ ...s, bucket: s.bucket.toISOString() })),
          slowest,
          failing,
        };
      },
    ),
    defineRoute(
      API.usageCsv,
      {
        tag: 'reports',
        summary: 'Every job finished in the period as CSV (times, wait/boot/run seconds, size, host, GitHub repository and user)',
        permission: 'read',
        produces: 'text/csv',
      },
      async (req, reply, token) => {
        const p = periodOf(req.query);
        const tenant = tenantScope(token);
        reply.hijack();
        const res = reply.raw;
        res.writeHead(200, { 'content-type': 'text/csv; charset=utf-8', 'content-disposition': `attachment; filename="kiln-usage.csv"`, 'cache-control': 'no-store' });
        let closed = false;
        res.on('close', () => (closed = true));
        const write = (s: string) => new Promise<void>((r) => (res.write(s) ? r() : res.once('drain', r)));
        try {
          await write(`${CSV_COLUMNS.join(',')}\n`);
          for (let after = 0; !closed; ) {
            const page = await usageRecords(db, p.since, after, 2000, tenant);
            if (page.length === 0) break;
            let out = '';
            for (const r of page) {
              const t = jobTimings(r);
              out += `${[r.id, r.tenant, r.state, r.arch, r.cpus, r.memoryBytes, r.labels, r.hostId, r.repo, r.org, r.user, r.workflow, r.createdAt, r.placedAt, r.runningAt, r.finishedAt, t.waitSeconds, t.bootSeconds, t.runSeconds, ...cacheCells(r)].map(csvCell).join(',')}\n`;
            }
            await write(out);
            after = page[page.length - 1]!.id;
          }
        } catch (e) {
          deps.ctx.log.warn({ err: e }, 'usage CSV ended with an error');
        } finally {
          res.end();
        }
        return undefined;
      },
    ),
    defineRoute(
      API.queue,
      { tag: 'reports', summary: 'Waiting jobs by label set and tenant, and the oldest 200 with how long each waited and why it is not placed', permission: 'read' },
      async (_req, _reply, token) => {
        const scope = tenantScope(token);
        const [snap, fleet, all] = await Promise.all([queueSnapshot(db, 200, scope), fleetWithUsage(db), listTenants(db)]);
        const tenants = scope === undefined ? all : all.filter((t) => t.name === scope);
        const byTenant = new Map(tenants.map((t) => [t.name, t]));
        const now = Date.now();
        return {
          groups: snap.groups.map((g) => ({ ...g, oldest: g.oldest.toISOString(), waitedSeconds: Math.max(0, (now - g.oldest.getTime()) / 1000) })),
          jobs: snap.oldest.map((j) => {
            const t = byTenant.get(j.tenant);
            return {
              id: j.id,
              tenant: j.tenant,
              arch: j.arch,
              cpus: j.cpus,
              memoryBytes: j.memoryBytes,
              labels: j.labels,
              createdAt: j.createdAt.toISOString(),
              waitedSeconds: Math.max(0, (now - j.createdAt.getTime()) / 1000),
              why: whyWaiting(j, fleet, t ? { active: t.active, limit: t.maxConcurrent } : undefined),
            };
          }),
        };
      },
    ),
  ];
}
