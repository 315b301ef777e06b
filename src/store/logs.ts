/** Job logs: chunks stored in order with a per-job byte cap; reading by cursor for `logs -f`. */
import { sql } from 'kysely';
import type { LogChunk, LogStream } from '../core/job.ts';
import type { Db, Tx } from './store.ts';
import { batchRows } from './batch-rows.ts';
import { idIn } from './id-list.ts';

const STREAM_CODE: Record<LogStream, number> = { stdout: 1, stderr: 2, kiln: 3 };
const STREAM_NAME: Record<number, LogStream> = { 1: 'stdout', 2: 'stderr', 3: 'kiln' };

export interface IncomingChunk {
  jobId: number;
  attempt: number;
  seq: number;
  stream: 'stdout' | 'stderr';
  data: Buffer;
}

export interface AppendResult {
  /** Jobs that got new data (or were truncated), with their tenant (the live feed is scoped by it). */
  changed: { id: number; tenant: string }[];
  /**
   * Per `jobId:attempt` in the batch: every chunk up to this seq is settled (stored, or deliberately not:
   * past the job's cap, or of an attempt that is no longer the job's), so the agent may forget it.
   */
  settled: Map<string, number>;
}

export const chunkKey = (jobId: number, attempt: number): string => `${jobId}:${attempt}`;

/**
 * Appends chunks (any jobs, in arrival order). Each attempt's chunks are stored strictly in sequence: a
 * chunk is taken only if it is the next one (seq = stored maximum + 1), replays are ignored, and a chunk
 * after a hole is not stored (the agent resends from the hole after it reconnects), so the stored output is
 * always a prefix and reads back in order. Chunks past a job's cap are dropped; the first time a job hits
 * its cap a `kiln` note says so and the job is flagged `log_truncated`.
 */
export async function appendLogs(tx: Tx, chunks: IncomingChunk[], capBytes: number): Promise<AppendResult> {
  const settled = new Map<string, number>();
  if (chunks.length === 0) return { changed: [], settled };
  const jobIds = [...new Set(chunks.map((c) => c.jobId))];
  const jobs = await tx
    .selectFrom('jobs')
    .select(['id', 'tenant', 'attempt', 'log_bytes', 'log_truncated'])
    .where(idIn('id', jobIds))
    .forUpdate()
    .execute();
  const budget = new Map(jobs.map((j) => [j.id, { tenant: j.tenant, used: j.log_bytes, truncated: j.log_truncated, attempt: j.attempt, grew: 0 }]));
  // The agent numbers each attempt's chunks from 0 upwards, so anything at or below the stored maximum is a replay.
  const maxSeq = await tx
    .selectFrom('job_logs')
    .select(['job_id', 'attempt', sql<number>`max(seq)`.as('seq')])
    .where(idIn('job_id', jobIds))
    .where('stream', '<>', STREAM_CODE.kiln)
    .groupBy(['job_id', 'attempt'])
    .execute();
  const seen = new Map(maxSeq.map((m) => [`${m.job_id}:${m.attempt}`, Number(m.seq)]));
  const rows: { job_id: number; attempt: number; seq: number; stream: number; data: Buffer }[] = [];
  for (const c of chunks) {
    const b = budget.get(c.jobId);
    const key = chunkKey(c.jobId, c.attempt);
    if (!b || b.truncated || c.attempt !== b.attempt) {
      // Nowhere to store it, now or later: settled, so the agent stops resending it.
      settled.set(key, Math.max(settled.get(key) ?? -1, c.seq));
      continue;
    }
    const last = seen.get(key) ?? -1;
    if (c.seq !== last + 1) {
      if (c.seq <= last) settled.set(key, last);
      continue; // a replay, or a chunk after a hole
    }
    seen.set(key, c.seq);
    settled.set(key, c.seq);
    if (b.used + c.data.length > capBytes) {
      const room = Math.max(0, capBytes - b.used);
      if (room > 0) rows.push({ job_id: c.jobId, attempt: c.attempt, seq: c.seq, stream: STREAM_CODE[c.stream], data: c.data.subarray(0, room) });
      b.used += room;
      b.grew += room;
      b.truncated = true;
      const note = Buffer.from(`kiln: log limit of ${capBytes} bytes reached; later output of this job was not stored\n`);
      rows.push({ job_id: c.jobId, attempt: c.attempt, seq: Number.MAX_SAFE_INTEGER, stream: STREAM_CODE.kiln, data: note });
      continue;
    }
    rows.push({ job_id: c.jobId, attempt: c.attempt, seq: c.seq, stream: STREAM_CODE[c.stream], data: c.data });
    b.used += c.data.length;
    b.grew += c.data.length;
  }
  if (rows.length === 0) return { changed: [], settled };
  for (let i = 0; i < rows.length; i += 500) {
    await tx
      .insertInto('job_logs')
      .values(rows.slice(i, i + 500))
      .onConflict((oc) => oc.columns(['job_id', 'attempt', 'seq']).doNothing())
      .execute();
  }
  const changed = [...budget.entries()].filter(([, b]) => b.grew > 0 || b.truncated);
  if (changed.length > 0) {
    const batch = batchRows('v', [['id', 'bigint'], ['used', 'bigint'], ['truncated', 'boolean']], changed.map(([id, b]) => ({ id, used: b.used, truncated: b.truncated })));
    await sql`
      UPDATE jobs SET log_bytes = v.used, log_truncated = v.truncated
      FROM ${batch}
      WHERE jobs.id = v.id`.execute(tx);
  }
  return { changed: changed.map(([id, b]) => ({ id, tenant: b.tenant })), settled };
}

/** The highest seq stored for an attempt's output (-1: none), and whether the job's output was truncated. */
export async function storedLogSeq(db: Db, jobId: number, attempt: number): Promise<{ seq: number; truncated: boolean }> {
  const job = await db.selectFrom('jobs').select(['log_truncated']).where('id', '=', jobId).executeTakeFirst();
  const r = await db
    .selectFrom('job_logs')
    .select(sql<number | null>`max(seq)`.as('seq'))
    .where('job_id', '=', jobId)
    .where('attempt', '=', attempt)
    .where('stream', '<>', STREAM_CODE.kiln)
    .executeTakeFirst();
  return { seq: r?.seq === null || r?.seq === undefined ? -1 : Number(r.seq), truncated: job?.log_truncated ?? false };
}

export async function readLogs(db: Db, jobId: number, afterId: number, limit: number): Promise<LogChunk[]> {
  const rows = await db
    .selectFrom('job_logs')
    .select(['id', 'attempt', 'stream', 'data'])
    .where('job_id', '=', jobId)
    .where('id', '>', afterId)
    .orderBy('id')
    .limit(limit)
    .execute();
  return rows.map((r) => ({
    id: r.id,
    attempt: r.attempt,
    stream: STREAM_NAME[r.stream] ?? 'kiln',
    data: Buffer.isBuffer(r.data) ? r.data : Buffer.from(r.data.buffer, r.data.byteOffset, r.data.byteLength),
  }));
}
