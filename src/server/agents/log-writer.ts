/**
 * Buffers incoming log chunks and stores them in batches, in arrival order, with the per-job cap. Each push
 * resolves once its batch is stored, with how far that attempt's output is settled (what the gateway
 * acknowledges to the agent); it rejects when the batch could not be stored (the agent then resends).
 */
import { appendLogs, chunkKey, type IncomingChunk } from '../../store/logs.ts';
import type { ServerContext } from '../context.ts';

export interface LogWriter {
  /** Resolves with the seq up to which the chunk's (job, attempt) output is settled, once its batch is stored. */
  push(c: IncomingChunk): Promise<number | undefined>;
  /** Resolves once everything pushed so far is stored. */
  flush(): Promise<void>;
  /** How far an attempt's output is known to be settled by this writer (-1: nothing seen here). */
  settled(jobId: number, attempt: number): number;
  /** Forgets an attempt (its result was applied). */
  forget(jobId: number, attempt: number): void;
  close(): Promise<void>;
}

export function makeLogWriter(ctx: ServerContext, delayMs = 20): LogWriter {
  let buf: IncomingChunk[] = [];
  let bytes = 0;
  let timer: NodeJS.Timeout | undefined;
  let chain: Promise<void> = Promise.resolve();
  /** The batch being filled: its outcome, shared by every push in it. */
  let current: Promise<Map<string, number>> | undefined;
  let settle: ((m: Map<string, number>) => void) | undefined;
  let fail: ((e: unknown) => void) | undefined;
  const settledUpTo = new Map<string, number>();

  const flush = (): Promise<void> => {
    if (timer) clearTimeout(timer);
    timer = undefined;
    const batch = buf;
    const done = settle;
    const failed = fail;
    buf = [];
    bytes = 0;
    current = undefined;
    settle = undefined;
    fail = undefined;
    chain = chain.then(async () => {
      if (batch.length === 0) return;
      try {
        const r = await ctx.store.withTransaction((tx) => appendLogs(tx, batch, ctx.options.logLimitBytes));
        for (const [k, seq] of r.settled) settledUpTo.set(k, Math.max(settledUpTo.get(k) ?? -1, seq));
        for (const c of r.changed) ctx.events.emit('job.logs', { jobId: c.id, tenant: c.tenant });
        done?.(r.settled);
      } catch (e) {
        ctx.log.error({ err: e, chunks: batch.length }, 'could not store job logs; the agents will resend them');
        failed?.(e);
      }
    });
    return chain;
  };

  return {
    push(c) {
      buf.push(c);
      bytes += c.data.length;
      current ??= new Promise<Map<string, number>>((res, rej) => {
        settle = res;
        fail = rej;
      });
      const mine = current;
      if (bytes > 4 * 1024 * 1024 || buf.length > 2000) void flush();
      else timer ??= setTimeout(() => void flush(), delayMs);
      return mine.then((m) => m.get(chunkKey(c.jobId, c.attempt)));
    },
    flush,
    settled: (jobId, attempt) => settledUpTo.get(chunkKey(jobId, attempt)) ?? -1,
    forget: (jobId, attempt) => void settledUpTo.delete(chunkKey(jobId, attempt)),
    close: flush,
  };
}
