/** Prometheus metrics for one server instance (its own registry: no global state). */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

export interface Metrics {
  registry: Registry;
  submitted: Counter;
  placements: Counter;
  finished: Counter<'state'>;
  placeLatency: Histogram;
  hostsConnected: Gauge;
  queueDepth: Gauge;
  agentProtocolErrors: Counter<'code'>;
  mirrorHealthy: Gauge<'host'>;
  mirrorCacheBytes: Gauge<'host'>;
  /** Job VMs that came up and started their command, by how: restored from a snapshot (warm) or booted (cold). */
  vmStarts: Counter<'start'>;
  /** Warm starts: VMM start to the restored guest ready for the command (state loaded, identity taken). */
  restoreSeconds: Histogram;
  /** Warm cache disks (docs/caches.md), counted from the jobs' results. */
  cacheHits: Counter;
  cacheMisses: Counter;
  cacheCommits: Counter;
  cacheCommittedBytes: Counter;
  cacheCommitSeconds: Histogram;
  cacheEvictions: Counter;
  cacheTransfers: Counter<'outcome'>;
  cacheTransferBytes: Counter;
  cacheRelayBytes: Gauge;
}

/** A host's mirror as the store last heard of it (fleet-wide: every replica reports every host). */
export interface MirrorSample {
  host: string;
  healthy: boolean;
  cacheBytes: number;
}

export function makeMetrics(queueDepth: () => Promise<number>, mirrors: () => Promise<MirrorSample[]> = async () => []): Metrics {
  const registry = new Registry();
  // Both mirror gauges come from one read of the store per scrape.
  let sampled: Promise<MirrorSample[]> | undefined;
  const sample = () =>
    (sampled ??= mirrors()
      .catch(() => [])
      .finally(() => setImmediate(() => (sampled = undefined))));
  collectDefaultMetrics({ register: registry, prefix: 'kiln_' });
  return {
    registry,
    submitted: new Counter({ name: 'kiln_jobs_submitted_total', help: 'Jobs accepted', registers: [registry] }),
    placements: new Counter({ name: 'kiln_placements_total', help: 'Jobs placed on hosts by this replica', registers: [registry] }),
    finished: new Counter({ name: 'kiln_jobs_finished_total', help: 'Jobs that reached a final state', labelNames: ['state'], registers: [registry] }),
    placeLatency: new Histogram({
      name: 'kiln_submit_to_placed_seconds',
      help: 'Time from submission to placement',
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30],
      registers: [registry],
    }),
    hostsConnected: new Gauge({ name: 'kiln_hosts_connected', help: 'Agents connected to this replica', registers: [registry] }),
    queueDepth: new Gauge({
      name: 'kiln_jobs_queued',
      help: 'Jobs waiting for a host',
      registers: [registry],
      async collect() {
        this.set(await queueDepth().catch(() => 0));
      },
    }),
    vmStarts: new Counter({ name: 'kiln_vm_starts_total', help: 'Job VMs started, by how they came up (warm: restored from a snapshot; cold: booted)', labelNames: ['start'], registers: [registry] }),
    restoreSeconds: new Histogram({
      name: 'kiln_vm_restore_seconds',
      help: 'Warm starts: time from the VMM start to the restored guest ready for the job (identity and settings applied)',
      buckets: [0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60],
      registers: [registry],
    }),
    agentProtocolErrors: new Counter({ name: 'kiln_agent_protocol_errors_total', help: 'Agent messages rejected', labelNames: ['code'], registers: [registry] }),
    mirrorHealthy: new Gauge({
      name: 'kiln_host_mirror_healthy',
      help: 'Whether the host’s registry mirror answered its health check at the last report (1 or 0)',
      labelNames: ['host'],
      registers: [registry],
      async collect() {
        this.reset();
        for (const m of await sample()) this.set({ host: m.host }, m.healthy ? 1 : 0);
      },
    }),
    cacheHits: new Counter({ name: 'kiln_cache_hits_total', help: 'Jobs that started from a committed version of their cache', registers: [registry] }),
    cacheMisses: new Counter({ name: 'kiln_cache_misses_total', help: 'Jobs that asked for a cache their host did not hold (they started empty)', registers: [registry] }),
    cacheCommits: new Counter({ name: 'kiln_cache_commits_total', help: 'Cache versions committed by trusted jobs', registers: [registry] }),
    cacheCommittedBytes: new Counter({ name: 'kiln_cache_committed_bytes_total', help: 'Bytes (allocated) of the cache versions committed', registers: [registry] }),
    cacheCommitSeconds: new Histogram({
      name: 'kiln_cache_commit_seconds',
      help: 'Time to commit a cache version (flatten, check, sync, rename)',
      buckets: [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120],
      registers: [registry],
    }),
    cacheEvictions: new Counter({ name: 'kiln_cache_evictions_total', help: 'Caches evicted from hosts (least recently used, over the host budget)', registers: [registry] }),
    cacheTransfers: new Counter({
      name: 'kiln_cache_transfers_total',
      help: 'Cache fetches from a peer host, by outcome (fetched, none: no peer had a newer version, refused, peer_gone, timeout, checksum, failed)',
      labelNames: ['outcome'],
      registers: [registry],
    }),
    cacheTransferBytes: new Counter({ name: 'kiln_cache_transfer_bytes_total', help: 'Bytes of cache images relayed from one host to another', registers: [registry] }),
    cacheRelayBytes: new Gauge({ name: 'kiln_cache_relay_bytes', help: 'Cache image bytes relayed and not yet acknowledged by their receiving host (bounded by the relay window)', registers: [registry] }),
    mirrorCacheBytes: new Gauge({
      name: 'kiln_host_mirror_cache_bytes',
      help: 'Bytes the host’s registry mirror cache occupies on disk at the last report',
      labelNames: ['host'],
      registers: [registry],
      async collect() {
        this.reset();
        for (const m of await sample()) this.set({ host: m.host }, m.cacheBytes);
      },
    }),
  };
}
