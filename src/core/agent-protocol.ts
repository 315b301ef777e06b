/**
 * The agent protocol: typed, schema-validated messages over one WebSocket per host, in both directions.
 * The agent dials the server (`/v1/agent/connect`, join token in the Authorization header), sends `hello`
 * with its capacity and what it runs, and the server answers `welcome` after reconciling. Shared by server
 * and agent; nothing here does I/O. See docs/ARCHITECTURE.md ("Agent protocol").
 */
import { Type, type Static, type TSchema } from '@sinclair/typebox';
import { TypeCompiler } from '@sinclair/typebox/compiler';
import { KilnError } from './errors.ts';

/**
 * 2: output is acknowledged (`log.ack`) and resent until it is; a job's command starts only once the server
 * granted it (`job.start` → `start.ok`), see docs/ARCHITECTURE.md ("At-most-once starts").
 * 3: cache chunks are binary frames (cache transfer version 2). An agent and a server of different versions
 * are refused at hello (run the same kiln version on both): a newer agent's cache messages would otherwise be
 * bad messages to an older server, which closes the connection on each.
 */
export const PROTOCOL_VERSION = 3;
/** Largest WebSocket message either side accepts. */
export const MAX_MESSAGE_BYTES = 1024 * 1024;
/** Largest raw log chunk in one `job.log` message (base64 grows it by a third). */
export const MAX_LOG_CHUNK_BYTES = 256 * 1024;

const Id = Type.Integer({ minimum: 1 });
const Attempt = Type.Integer({ minimum: 1, maximum: 1000 });
const Name = Type.String({ minLength: 1, maxLength: 200 });

export const HostCapacity = Type.Object(
  {
    name: Type.String({ minLength: 1, maxLength: 100, pattern: '^[A-Za-z0-9._-]+$' }),
    arch: Type.Union([Type.Literal('amd64'), Type.Literal('arm64')]),
    cpus: Type.Integer({ minimum: 1, maximum: 4096 }),
    memoryBytes: Type.Integer({ minimum: 1 }),
    diskBytes: Type.Integer({ minimum: 0 }),
    accel: Type.Union([Type.Literal('kvm'), Type.Literal('tcg'), Type.Literal('none')]),
    labels: Type.Array(Type.String({ minLength: 1, maxLength: 100 }), { maxItems: 64 }),
    driver: Type.String({ maxLength: 50 }),
    agentVersion: Type.String({ maxLength: 50 }),
  },
  { additionalProperties: false },
);
export type HostCapacity = Static<typeof HostCapacity>;

const mirrorStatusFields = {
  state: Type.Union([Type.Literal('stopped'), Type.Literal('starting'), Type.Literal('running'), Type.Literal('backoff')]),
  healthy: Type.Boolean(),
  restarts: Type.Integer({ minimum: 0 }),
  /** Bytes the cache occupies on disk (allocated blocks). */
  cacheBytes: Type.Integer({ minimum: 0 }),
  /** The upstream URL, never its credentials. */
  upstream: Type.String({ maxLength: 500 }),
  address: Type.String({ maxLength: 300 }),
  guestAddress: Type.Optional(Type.String({ maxLength: 300 })),
  pid: Type.Optional(Type.Integer({ minimum: 1 })),
  lastExit: Type.Optional(
    Type.Object(
      { code: Type.Union([Type.Integer(), Type.Null()]), signal: Type.Union([Type.String({ maxLength: 20 }), Type.Null()]), at: Type.String({ maxLength: 40 }) },
      { additionalProperties: false },
    ),
  ),
  /** The registry the mirror stands in for (docker.io when absent: agents before other registries). */
  registry: Type.Optional(Type.String({ maxLength: 200 })),
};

/** One mirror of another registry on the host (ghcr.io, quay.io), reported beside the first. */
export const OtherMirrorStatusMsg = Type.Object(mirrorStatusFields, { additionalProperties: false });
export type OtherMirrorStatusMsg = Static<typeof OtherMirrorStatusMsg>;

/**
 * The host's registry mirror as its agent reports it (never upstream credentials): the first mirror
 * (Docker Hub's when there is one), and the host's mirrors of other registries in `others`.
 */
export const MirrorStatusMsg = Type.Object(
  { ...mirrorStatusFields, others: Type.Optional(Type.Array(OtherMirrorStatusMsg, { maxItems: 16 })) },
  { additionalProperties: false },
);
export type MirrorStatusMsg = Static<typeof MirrorStatusMsg>;

/** How the host sleeps and wakes (src/core/power.ts), reported in hello and again just before it sleeps. */
export const HostPowerMsg = Type.Object(
  {
    driver: Type.Union([Type.Literal('none'), Type.Literal('command'), Type.Literal('wol')]),
    mac: Type.Optional(Type.String({ pattern: '^[0-9a-fA-F]{2}([:-][0-9a-fA-F]{2}){5}$' })),
    broadcast: Type.Optional(Type.String({ maxLength: 100 })),
    port: Type.Optional(Type.Integer({ minimum: 1, maximum: 65535 })),
  },
  { additionalProperties: false },
);
export type HostPowerMsg = Static<typeof HostPowerMsg>;

/**
 * One warm-start snapshot a host keeps, or builds, for an image and VM shape in use there (src/agent/snapshots.ts):
 * `ready` (jobs of this image and shape restore from it), `building` (a template VM is booting or being saved),
 * `failed` (the last build failed: `error` says why; jobs boot cold and the next use retries).
 */
export const SnapshotStateMsg = Type.Object(
  {
    /** The image as jobs name it (`default`, `ci`, a digest). */
    image: Type.String({ minLength: 1, maxLength: 200 }),
    digest: Type.Optional(Type.String({ maxLength: 100 })),
    arch: Type.Union([Type.Literal('amd64'), Type.Literal('arm64')]),
    cpus: Type.Integer({ minimum: 1 }),
    memoryBytes: Type.Integer({ minimum: 1 }),
    diskBytes: Type.Integer({ minimum: 1 }),
    /** Jobs with a cache of this size (the snapshot has a cache slot). */
    cacheBytes: Type.Optional(Type.Integer({ minimum: 1 })),
    state: Type.Union([Type.Literal('ready'), Type.Literal('building'), Type.Literal('failed')]),
    /** Jobs of this image and shape the host has started. */
    uses: Type.Integer({ minimum: 0 }),
    bytes: Type.Optional(Type.Integer({ minimum: 0 })),
    error: Type.Optional(Type.String({ maxLength: 500 })),
  },
  { additionalProperties: false },
);
export type SnapshotStateMsg = Static<typeof SnapshotStateMsg>;

/**
 * One guest image version a host holds in its image store (reported by its agent; the dashboard's fleet page
 * and `GET /v1/hosts` show them): the version jobs naming `profile` start on that host.
 */
export const HostImageMsg = Type.Object(
  {
    /** The image's profile, as jobs name it (`minimal`, `ci`, `runner`). */
    profile: Type.String({ minLength: 1, maxLength: 100 }),
    digest: Type.String({ minLength: 1, maxLength: 100 }),
    arch: Type.Union([Type.Literal('amd64'), Type.Literal('arm64')]),
    /** When it was built or imported (ISO 8601). */
    created: Type.Optional(Type.String({ maxLength: 40 })),
    /** Bytes of its files (kernel, initrd, root disk). */
    bytes: Type.Optional(Type.Integer({ minimum: 0 })),
  },
  { additionalProperties: false },
);
export type HostImageMsg = Static<typeof HostImageMsg>;

export const VmTimingsMsg = Type.Object({
  prepareMs: Type.Number(),
  bootMs: Type.Number(),
  runMs: Type.Number(),
  teardownMs: Type.Number(),
  guestUptimeAtInitMs: Type.Optional(Type.Number()),
});

/** A cache key as it travels: the server prefixes the job's tenant (docs/caches.md). */
export const CacheKeyMsg = Type.String({ minLength: 1, maxLength: 300, pattern: '^[A-Za-z0-9][A-Za-z0-9._/-]*$' });

/** A job's warm cache: which one, whether it may write it back, and who it is (recorded with a version it writes). */
export const JobCacheMsg = Type.Object(
  {
    key: CacheKeyMsg,
    /** true/false: decided at submission; 'ask': the agent asks the server after the job (cache.ask), as GitHub runners take any matching job. */
    write: Type.Union([Type.Boolean(), Type.Literal('ask')]),
    sizeBytes: Type.Optional(Type.Integer({ minimum: 16 * 1024 * 1024, maximum: 2 ** 44 })),
    ref: Type.Optional(Type.String({ maxLength: 300 })),
    commit: Type.Optional(Type.String({ maxLength: 100 })),
    by: Type.Optional(Type.String({ maxLength: 300 })),
  },
  { additionalProperties: false },
);
export type JobCacheMsg = Static<typeof JobCacheMsg>;

/**
 * Host-to-host cache transfer (docs/caches.md, "Fetching a cache from a peer"): the version of its messages.
 * An agent says in hello which version it speaks (`cacheTransfer`); the server relays only between agents
 * that speak the same one, and every transfer message names it (`tv`).
 * 2: a chunk is one binary WebSocket frame (header and raw bytes, `encodeCacheChunkFrame`), not JSON with
 * base64 data.
 */
export const CACHE_TRANSFER_VERSION = 2 as const;
/** Largest raw slice of a cache image in one chunk frame (with its header, well under MAX_MESSAGE_BYTES). */
export const MAX_CACHE_CHUNK_BYTES = 512 * 1024;
const Tv = Type.Literal(CACHE_TRANSFER_VERSION);
/**
 * A transfer version as a fetch and its refusal carry it: any, so that an agent speaking another version
 * than the server's is refused with both versions named, instead of being disconnected for a bad message.
 */
const AnyTv = Type.Integer({ minimum: 1, maximum: 1000 });
const TransferId = Type.String({ minLength: 8, maxLength: 64, pattern: '^[A-Za-z0-9_-]+$' });
const VersionId = Type.String({ minLength: 1, maxLength: 100, pattern: '^[A-Za-z0-9-]+$' });
const Sha256 = Type.String({ pattern: '^[0-9a-f]{64}$' });
/** Who wrote a version, as its record says: a fetched copy keeps the same record. */
export const CacheRecordMsg = Type.Object(
  {
    createdAt: Type.String({ maxLength: 40 }),
    jobId: Type.Optional(Type.String({ maxLength: 100 })),
    ref: Type.Optional(Type.String({ maxLength: 300 })),
    commit: Type.Optional(Type.String({ maxLength: 100 })),
    by: Type.Optional(Type.String({ maxLength: 300 })),
  },
  { additionalProperties: false },
);
export type CacheRecordMsg = Static<typeof CacheRecordMsg>;
/**
 * The header of a chunk frame: which transfer, its sequence number and where its bytes go in the image. The
 * bytes themselves follow the header in the same binary frame (see `encodeCacheChunkFrame`).
 */
export const CacheChunkHeader = Type.Object(
  {
    type: Type.Literal('cache.chunk'),
    tv: Tv,
    transferId: TransferId,
    seq: Type.Integer({ minimum: 0 }),
    /** Byte offset in the image: a multiple of MAX_CACHE_CHUNK_BYTES (the unit the checksum is taken over). */
    offset: Type.Integer({ minimum: 0, maximum: 2 ** 44 }),
  },
  { additionalProperties: false },
);
export type CacheChunkHeader = Static<typeof CacheChunkHeader>;
/** How a fetch ended, as the job's cache outcome and `kiln_cache_transfers_total{outcome}` say. */
export const CacheFetchOutcome = Type.Union([
  Type.Literal('fetched'),
  Type.Literal('none'),
  Type.Literal('refused'),
  Type.Literal('peer_gone'),
  Type.Literal('timeout'),
  Type.Literal('checksum'),
  Type.Literal('failed'),
]);
export type CacheFetchOutcome = Static<typeof CacheFetchOutcome>;
export const CacheFetchMsg = Type.Object(
  {
    outcome: CacheFetchOutcome,
    /** The peer host the version came (or was to come) from. */
    from: Type.Optional(Type.String({ maxLength: 100 })),
    version: Type.Optional(VersionId),
    bytes: Type.Optional(Type.Integer({ minimum: 0 })),
    seconds: Type.Optional(Type.Number({ minimum: 0 })),
    reason: Type.Optional(Type.String({ maxLength: 500 })),
  },
  { additionalProperties: false },
);
export type CacheFetchMsg = Static<typeof CacheFetchMsg>;

/** What happened to a job's cache: read (hit or empty), and whether the job's copy became the next version. */
export const CacheOutcomeMsg = Type.Object(
  {
    key: CacheKeyMsg,
    hit: Type.Boolean(),
    version: Type.Optional(Type.String({ maxLength: 100 })),
    committed: Type.Optional(
      Type.Object(
        {
          id: Type.String({ maxLength: 100 }),
          bytes: Type.Integer({ minimum: 0 }),
          seconds: Type.Number({ minimum: 0 }),
          /** The version's checksum (cache-store.ts `imageDigest`): what a peer's copy must match. */
          sha256: Type.Optional(Type.String({ pattern: '^[0-9a-f]{64}$' })),
        },
        { additionalProperties: false },
      ),
    ),
    /** The job's cache fetched from a peer host before it started (or why not). */
    fetch: Type.Optional(CacheFetchMsg),
    notSaved: Type.Optional(Type.String({ maxLength: 1000 })),
    /** Caches the host evicted after this job (least recently used, over its budget). */
    evicted: Type.Optional(Type.Integer({ minimum: 0 })),
  },
  { additionalProperties: false },
);
export type CacheOutcomeMsg = Static<typeof CacheOutcomeMsg>;

/** A cache the host holds, as its agent reports it (for placement and `kiln caches ls`). */
export const HostCacheMsg = Type.Object(
  {
    key: CacheKeyMsg,
    version: Type.Optional(Type.String({ maxLength: 100 })),
    bytes: Type.Integer({ minimum: 0 }),
    sizeBytes: Type.Integer({ minimum: 0 }),
    versions: Type.Integer({ minimum: 0 }),
    lastUsedAt: Type.String({ maxLength: 40 }),
    writer: Type.Optional(Type.String({ maxLength: 400 })),
  },
  { additionalProperties: false },
);
export type HostCacheMsg = Static<typeof HostCacheMsg>;


export const JobResultMsg = Type.Object(
  {
    jobId: Id,
    attempt: Attempt,
    outcome: Type.Union([
      Type.Literal('exited'),
      Type.Literal('timed_out'),
      Type.Literal('killed'),
      Type.Literal('boot_failed'),
      Type.Literal('crashed'),
      Type.Literal('launch_failed'),
    ]),
    exitCode: Type.Optional(Type.Integer({ minimum: 0, maximum: 255 })),
    code: Type.Optional(Type.String({ maxLength: 100 })),
    message: Type.Optional(Type.String({ maxLength: 4000 })),
    timings: Type.Optional(VmTimingsMsg),
    /** How many output chunks (seq 0 … logChunks-1) the agent sent for this attempt: the server checks it stored them all. */
    logChunks: Type.Optional(Type.Integer({ minimum: 0 })),
    /** The job's cache, when it asked for one. */
    cache: Type.Optional(CacheOutcomeMsg),
  },
  { additionalProperties: false },
);
export type JobResultMsg = Static<typeof JobResultMsg>;

export const RunningJobMsg = Type.Object(
  { jobId: Id, attempt: Attempt, phase: Type.Union([Type.Literal('booting'), Type.Literal('running')]) },
  { additionalProperties: false },
);
export type RunningJobMsg = Static<typeof RunningJobMsg>;

export const AgentMessage = Type.Union([
  Type.Object(
    {
      type: Type.Literal('hello'),
      protocol: Type.Integer(),
      host: HostCapacity,
      /** The host credential the server issued at this host's first registration (in its welcome). */
      credential: Type.Optional(Type.String({ minLength: 1, maxLength: 200 })),
      running: Type.Array(RunningJobMsg, { maxItems: 10_000 }),
      finished: Type.Array(JobResultMsg, { maxItems: 10_000 }),
      /** Present when the host runs a registry mirror. */
      mirror: Type.Optional(MirrorStatusMsg),
      /** The host's power driver; absent: none (it never sleeps). */
      power: Type.Optional(HostPowerMsg),
      /** Warm-start snapshots per image and VM shape; absent: the host's driver keeps none. */
      snapshots: Type.Optional(Type.Array(SnapshotStateMsg, { maxItems: 200 })),
      /** The warm caches this host holds (absent: none). */
      caches: Type.Optional(Type.Array(HostCacheMsg, { maxItems: 1000 })),
      /** The cache transfer version this agent speaks (CACHE_TRANSFER_VERSION); absent: it neither fetches nor serves caches. */
      cacheTransfer: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000 })),
      /** The guest image versions in the host's store (absent: an agent that does not report them). */
      images: Type.Optional(Type.Array(HostImageMsg, { maxItems: 200 })),
    },
    { additionalProperties: false },
  ),
  /** Periodic host status (every 15 s, on mirror health changes, when a snapshot's state changes and after a job that used a cache). */
  Type.Object(
    {
      type: Type.Literal('host.status'),
      mirror: Type.Optional(MirrorStatusMsg),
      snapshots: Type.Optional(Type.Array(SnapshotStateMsg, { maxItems: 200 })),
      caches: Type.Optional(Type.Array(HostCacheMsg, { maxItems: 1000 })),
      images: Type.Optional(Type.Array(HostImageMsg, { maxItems: 200 })),
    },
    { additionalProperties: false },
  ),
  Type.Object(
    { type: Type.Literal('job.phase'), jobId: Id, attempt: Attempt, phase: Type.Union([Type.Literal('booting'), Type.Literal('running')]) },
    { additionalProperties: false },
  ),
  Type.Object(
    {
      type: Type.Literal('job.log'),
      jobId: Id,
      attempt: Attempt,
      seq: Type.Integer({ minimum: 0 }),
      stream: Type.Union([Type.Literal('stdout'), Type.Literal('stderr')]),
      data: Type.String({ maxLength: Math.ceil(MAX_LOG_CHUNK_BYTES / 3) * 4, contentEncoding: 'base64' }),
    },
    { additionalProperties: false },
  ),
  /**
   * The start lease: the guest is up and the job's command waits until the server has durably recorded that
   * it starts (state running, on this host and attempt) and answered `start.ok`.
   */
  Type.Object(
    {
      type: Type.Literal('job.start'),
      jobId: Id,
      attempt: Attempt,
      /** How the VM came up: restored from a snapshot (warm) or booted (cold); absent from older agents. */
      start: Type.Optional(Type.Union([Type.Literal('warm'), Type.Literal('cold')])),
      /** VMM start to the guest ready for the command (a warm start: the restore, identity included). */
      bootMs: Type.Optional(Type.Number({ minimum: 0 })),
    },
    { additionalProperties: false },
  ),
  Type.Object({ type: Type.Literal('job.done'), result: JobResultMsg }, { additionalProperties: false }),
  /** A job whose cache write is 'ask' succeeded: may its cache be committed? (answered by cache.answer) */
  Type.Object({ type: Type.Literal('cache.ask'), jobId: Id, attempt: Attempt }, { additionalProperties: false }),
  /**
   * Cache transfer, receiving side: job (jobId, attempt), placed on this host, wants a newer version of its
   * cache than `have` (the host's current one; absent: none) from a peer. Answered by cache.incoming or
   * cache.fetch.failed, both naming `fetchId`.
   */
  Type.Object(
    { type: Type.Literal('cache.fetch'), tv: AnyTv, fetchId: TransferId, jobId: Id, attempt: Attempt, key: CacheKeyMsg, have: Type.Optional(VersionId) },
    { additionalProperties: false },
  ),
  /** Receiving side: every chunk up to `seq` is written; the relay may let the peer send `window` more. */
  Type.Object({ type: Type.Literal('cache.ack'), tv: Tv, transferId: TransferId, seq: Type.Integer({ minimum: 0 }) }, { additionalProperties: false }),
  /** Receiving side: how the transfer ended (the fetched version is in the store only on `fetched`). */
  Type.Object(
    { type: Type.Literal('cache.received'), tv: Tv, transferId: TransferId, outcome: CacheFetchOutcome, bytes: Type.Integer({ minimum: 0 }), reason: Type.Optional(Type.String({ maxLength: 500 })) },
    { additionalProperties: false },
  ),
  /** Sending side (answer to cache.send): the version's image size, checksum and record; chunks follow. */
  Type.Object(
    { type: Type.Literal('cache.offer'), tv: Tv, transferId: TransferId, version: VersionId, length: Type.Integer({ minimum: 1, maximum: 2 ** 44 }), sha256: Sha256, record: CacheRecordMsg },
    { additionalProperties: false },
  ),
  // Sending side: the slices of the image travel as binary chunk frames (decodeCacheChunkFrame), not here.
  /** Sending side: every non-zero slice was sent (`chunks` of them). */
  Type.Object({ type: Type.Literal('cache.end'), tv: Tv, transferId: TransferId, chunks: Type.Integer({ minimum: 0 }) }, { additionalProperties: false }),
  /** Either side gives up on a transfer (the sender cannot read the version, the receiver cannot write it). */
  Type.Object({ type: Type.Literal('cache.abort'), tv: Tv, transferId: TransferId, reason: Type.String({ maxLength: 500 }) }, { additionalProperties: false }),
  /** Drained for a sleep request: the agent closes its connection next and runs its sleep command. */
  Type.Object({ type: Type.Literal('host.sleeping'), requestId: Id, power: HostPowerMsg }, { additionalProperties: false }),
  /** A sleep the server asked for failed (or cannot be done); `message` carries the command's output. */
  Type.Object(
    { type: Type.Literal('power.error'), action: Type.Literal('sleep'), requestId: Type.Optional(Id), code: Type.String({ maxLength: 100 }), message: Type.String({ maxLength: 8000 }) },
    { additionalProperties: false },
  ),
]);
export type AgentMessage = Static<typeof AgentMessage>;

export const LaunchSpec = Type.Object(
  {
    arch: Type.Union([Type.Literal('amd64'), Type.Literal('arm64')]),
    cpus: Type.Integer({ minimum: 1 }),
    memoryBytes: Type.Integer({ minimum: 1 }),
    diskBytes: Type.Integer({ minimum: 1 }),
    image: Type.String({ maxLength: 200 }),
    command: Type.Array(Type.String(), { minItems: 1 }),
    env: Type.Record(Type.String(), Type.String()),
    /** Names of env entries that are secrets: the agent masks their values in the output it sends. */
    secretEnv: Type.Optional(Type.Array(Type.String(), { maxItems: 500 })),
    cwd: Type.Optional(Type.String()),
    timeoutMs: Type.Integer({ minimum: 1 }),
    network: Type.Union([Type.Literal('none'), Type.Literal('user')]),
    cache: Type.Optional(JobCacheMsg),
    /** What this VM's egress filter opens beyond the internet: its tenant's and repository's allowlists (server-set). */
    egressAllow: Type.Optional(Type.Array(Type.String({ minLength: 1, maxLength: 300 }), { maxItems: 512 })),
  },
  { additionalProperties: false },
);
export type LaunchSpec = Static<typeof LaunchSpec>;

export const ServerMessage = Type.Union([
  Type.Object(
    {
      type: Type.Literal('welcome'),
      protocol: Type.Integer(),
      hostId: Id,
      hostName: Name,
      serverId: Type.String(),
      /** Issued once, at the host's first registration: the agent keeps it and presents it in every hello. */
      credential: Type.Optional(Type.String({ minLength: 1, maxLength: 200 })),
    },
    { additionalProperties: false },
  ),
  Type.Object({ type: Type.Literal('launch'), jobId: Id, attempt: Attempt, spec: LaunchSpec }, { additionalProperties: false }),
  Type.Object({ type: Type.Literal('stop'), jobId: Id, attempt: Attempt, reason: Type.String() }, { additionalProperties: false }),
  Type.Object({ type: Type.Literal('done.ack'), jobId: Id, attempt: Attempt }, { additionalProperties: false }),
  /** Drain (no new jobs come; running ones finish), answer host.sleeping, then sleep. */
  Type.Object({ type: Type.Literal('sleep'), requestId: Id }, { additionalProperties: false }),
  /**
   * Wake-on-LAN relay: send the magic packet for `mac` to `broadcast:port` from this (awake) host, which
   * reported the same broadcast network as the asleep one (the server may not be on that network).
   */
  Type.Object(
    {
      type: Type.Literal('wol'),
      mac: Type.String({ pattern: '^[0-9a-fA-F]{2}([:-][0-9a-fA-F]{2}){5}$' }),
      broadcast: Type.String({ minLength: 1, maxLength: 100 }),
      port: Type.Integer({ minimum: 1, maximum: 65535 }),
    },
    { additionalProperties: false },
  ),
  /** Every output chunk of (job, attempt) up to `seq` is stored: the agent may forget them. */
  Type.Object({ type: Type.Literal('log.ack'), jobId: Id, attempt: Attempt, seq: Type.Integer({ minimum: 0 }) }, { additionalProperties: false }),
  /** Answer to `job.start`: the command may start (`start.ok`) or must not (the VM is stopped). */
  Type.Object({ type: Type.Literal('start.ok'), jobId: Id, attempt: Attempt }, { additionalProperties: false }),
  Type.Object({ type: Type.Literal('start.refused'), jobId: Id, attempt: Attempt, reason: Type.String({ maxLength: 500 }) }, { additionalProperties: false }),
  Type.Object({ type: Type.Literal('error'), code: Type.String(), message: Type.String() }, { additionalProperties: false }),
  /** Cache transfer, to the sending peer: offer `version` of `key` and stream it, at most `window` chunks ahead of the acks. */
  Type.Object(
    { type: Type.Literal('cache.send'), tv: Tv, transferId: TransferId, key: CacheKeyMsg, version: VersionId, window: Type.Integer({ minimum: 1, maximum: 1024 }) },
    { additionalProperties: false },
  ),
  /**
   * To the receiving agent: the fetch `fetchId` is on, from host `from`. `sha256` is the checksum the version's
   * commit recorded with the server (not the peer's say); the fetched image must match it.
   */
  Type.Object(
    {
      type: Type.Literal('cache.incoming'),
      tv: Tv,
      fetchId: TransferId,
      transferId: TransferId,
      from: Type.String({ maxLength: 100 }),
      key: CacheKeyMsg,
      version: VersionId,
      length: Type.Integer({ minimum: 1, maximum: 2 ** 44 }),
      sha256: Sha256,
      record: CacheRecordMsg,
    },
    { additionalProperties: false },
  ),
  /**
   * To the receiving agent: no fetch (no peer has a newer version, or the request was refused) or it ended early.
   * A refusal carries the version the fetch named (an agent of another transfer version can read it).
   */
  Type.Object(
    { type: Type.Literal('cache.fetch.failed'), tv: AnyTv, fetchId: TransferId, outcome: CacheFetchOutcome, reason: Type.String({ maxLength: 500 }), from: Type.Optional(Type.String({ maxLength: 100 })) },
    { additionalProperties: false },
  ),
  // The peer's chunk frames are relayed to the receiving agent as they came (binary, not here).
  Type.Object({ type: Type.Literal('cache.end'), tv: Tv, transferId: TransferId, chunks: Type.Integer({ minimum: 0 }) }, { additionalProperties: false }),
  /** Relayed from the receiving agent to the peer: it may send up to `seq + window`. */
  Type.Object({ type: Type.Literal('cache.ack'), tv: Tv, transferId: TransferId, seq: Type.Integer({ minimum: 0 }) }, { additionalProperties: false }),
  /** To either side: the transfer is over (the other side went away, stalled or broke the protocol). */
  Type.Object({ type: Type.Literal('cache.abort'), tv: Tv, transferId: TransferId, reason: Type.String({ maxLength: 500 }) }, { additionalProperties: false }),
  /** Answer to cache.ask: commit (with the ref and commit to record) or not, and why. */
  Type.Object(
    {
      type: Type.Literal('cache.answer'),
      jobId: Id,
      attempt: Attempt,
      write: Type.Boolean(),
      reason: Type.Optional(Type.String({ maxLength: 500 })),
      ref: Type.Optional(Type.String({ maxLength: 300 })),
      commit: Type.Optional(Type.String({ maxLength: 100 })),
    },
    { additionalProperties: false },
  ),
]);
export type ServerMessage = Static<typeof ServerMessage>;

export type AgentMessageOf<T extends AgentMessage['type']> = Extract<AgentMessage, { type: T }>;
export type ServerMessageOf<T extends ServerMessage['type']> = Extract<ServerMessage, { type: T }>;

/** A decoder for one direction: parses JSON, validates against the schema, throws `protocol.*` errors. */
export interface MessageDecoder<T> {
  decode(raw: string | Buffer): T;
}

/** Compiled checks, one per schema per process: compiling one took ~0.5 ms, and a server makes a decoder per agent. */
const compiled = new WeakMap<TSchema, ReturnType<typeof TypeCompiler.Compile>>();

function checkOf<S extends TSchema>(schema: S): ReturnType<typeof TypeCompiler.Compile<S>> {
  let check = compiled.get(schema) as ReturnType<typeof TypeCompiler.Compile<S>> | undefined;
  if (!check) {
    check = TypeCompiler.Compile(schema);
    compiled.set(schema, check);
  }
  return check;
}

function makeDecoder<S extends TSchema>(schema: S, side: string): MessageDecoder<Static<S>> {
  const check = checkOf(schema);
  return {
    decode(raw) {
      const size = typeof raw === 'string' ? Buffer.byteLength(raw) : raw.length;
      if (size > MAX_MESSAGE_BYTES) {
        throw new KilnError('protocol.too_large', `${side} message of ${size} bytes exceeds ${MAX_MESSAGE_BYTES}`);
      }
      let value: unknown;
      try {
        value = JSON.parse(typeof raw === 'string' ? raw : raw.toString('utf8'));
      } catch {
        throw new KilnError('protocol.bad_json', `${side} message is not JSON`);
      }
      if (!check.Check(value)) {
        const first = check.Errors(value).First();
        const type = typeof value === 'object' && value !== null && 'type' in value ? String((value as { type: unknown }).type) : '?';
        throw new KilnError(
          'protocol.bad_message',
          `${side} message (type ${type.slice(0, 40)}) does not match the protocol${first ? `: ${first.path || '/'} ${first.message}` : ''}`,
        );
      }
      return value;
    },
  };
}

export const makeAgentMessageDecoder = (): MessageDecoder<AgentMessage> => makeDecoder(AgentMessage, 'agent');
export const makeServerMessageDecoder = (): MessageDecoder<ServerMessage> => makeDecoder(ServerMessage, 'server');

export function encodeMessage(m: AgentMessage | ServerMessage): string {
  return JSON.stringify(m);
}

/**
 * Cache chunk frames: the one binary WebSocket frame of the protocol, a slice of a cache image on its way
 * from the sending peer, through the server's relay (which checks the header and forwards the frame's bytes
 * as they came), to the receiving agent. Layout:
 *
 *   bytes 0-3          header length H, unsigned 32-bit big-endian, 1..MAX_CACHE_CHUNK_HEADER_BYTES
 *   bytes 4 … 4+H-1    the header, UTF-8 JSON: {type: 'cache.chunk', tv, transferId, seq, offset} (CacheChunkHeader)
 *   bytes 4+H … end    the slice's raw bytes, 1..MAX_CACHE_CHUNK_BYTES
 *
 * Every other message is a JSON text frame.
 */
export const MAX_CACHE_CHUNK_HEADER_BYTES = 512;

/** A decoded chunk frame: its checked header and a view of its data (no copy: it shares the frame's memory). */
export interface CacheChunkFrame {
  header: CacheChunkHeader;
  data: Buffer;
}

/** One chunk frame: header and data in one buffer (the data is copied once; base64 and JSON are gone). */
export function encodeCacheChunkFrame(header: CacheChunkHeader, data: Buffer): Buffer {
  if (data.length < 1 || data.length > MAX_CACHE_CHUNK_BYTES) {
    throw new KilnError(data.length < 1 ? 'protocol.chunk_empty' : 'protocol.chunk_too_large', `a cache chunk holds 1 to ${MAX_CACHE_CHUNK_BYTES} bytes, not ${data.length}`);
  }
  const h = Buffer.from(JSON.stringify(header));
  if (h.length > MAX_CACHE_CHUNK_HEADER_BYTES) throw new KilnError('protocol.chunk_header_length', `a cache chunk header of ${h.length} bytes is over ${MAX_CACHE_CHUNK_HEADER_BYTES}`);
  const frame = Buffer.allocUnsafe(4 + h.length + data.length);
  frame.writeUInt32BE(h.length, 0);
  h.copy(frame, 4);
  data.copy(frame, 4 + h.length);
  return frame;
}

/**
 * Decodes and checks a binary frame as a chunk frame; throws `protocol.chunk_*` errors for anything else:
 * `chunk_too_short` (no room for the header length), `chunk_header_length` (0, over the bound, or past the
 * frame's end), `chunk_empty` / `chunk_too_large` (the data), `chunk_bad_header` (not JSON, or not the schema:
 * another transfer version is named as such).
 */
export function decodeCacheChunkFrame(frame: Buffer): CacheChunkFrame {
  if (frame.length < 4) throw new KilnError('protocol.chunk_too_short', `a binary frame of ${frame.length} bytes is too short for a cache chunk (4-byte header length, header, data)`);
  const h = frame.readUInt32BE(0);
  if (h < 1 || h > MAX_CACHE_CHUNK_HEADER_BYTES) throw new KilnError('protocol.chunk_header_length', `a cache chunk frame's header length ${h} is outside 1-${MAX_CACHE_CHUNK_HEADER_BYTES}`);
  if (4 + h > frame.length) throw new KilnError('protocol.chunk_header_length', `a cache chunk frame's header length ${h} runs past the end of its ${frame.length} bytes`);
  const n = frame.length - 4 - h;
  if (n < 1) throw new KilnError('protocol.chunk_empty', 'a cache chunk frame carries no data');
  if (n > MAX_CACHE_CHUNK_BYTES) throw new KilnError('protocol.chunk_too_large', `a cache chunk frame carries ${n} bytes of data, over ${MAX_CACHE_CHUNK_BYTES}`);
  let header: unknown;
  try {
    header = JSON.parse(frame.toString('utf8', 4, 4 + h));
  } catch {
    throw new KilnError('protocol.chunk_bad_header', 'a cache chunk frame\'s header is not JSON');
  }
  const check = checkOf(CacheChunkHeader);
  if (!check.Check(header)) {
    const tv = typeof header === 'object' && header !== null && 'tv' in header ? (header as { tv: unknown }).tv : undefined;
    if (typeof tv === 'number' && tv !== CACHE_TRANSFER_VERSION) {
      throw new KilnError('protocol.chunk_bad_header', `a cache chunk frame of transfer version ${tv}; this side speaks ${CACHE_TRANSFER_VERSION}`, { hint: 'run the same kiln version on agents and servers' });
    }
    const first = check.Errors(header).First();
    throw new KilnError('protocol.chunk_bad_header', `a cache chunk frame's header does not match the protocol${first ? `: ${first.path || '/'} ${first.message}` : ''}`);
  }
  return { header, data: frame.subarray(4 + h) };
}

/** WebSocket close codes the server uses beyond the standard ones. */
export const CLOSE_HOST_REMOVED = 4001;
export const CLOSE_TOKEN_REVOKED = 4002;
/** The server refused this host's identity or capacity claim: reconnecting will not help. */
export const CLOSE_HOST_REFUSED = 4003;
