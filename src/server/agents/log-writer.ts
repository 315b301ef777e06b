/** Buffers incoming log chunks and stores them in batches, in arrival order, with the per-job cap. */
import { appendLogs, type IncomingChunk } from '../../store/logs.ts';
import type { ServerContext } from '../context.ts';

export interface LogWriter {
  push(c: IncomingChunk): void;
  /** Resolves once everything pushed so far is stored. */
  flush(): Promise<void>;
  close(): Promise<void>;
}

export function makeLogWriter(ctx: ServerContext, delayMs = 20): LogWriter {
  let buf: IncomingChunk[] = [];
  let bytes = 0;
  let timer: NodeJS.Timeout | undefined;
  let chain: Promise<void> = Promise.resolve();

  const flush = (): Promise<void> => {
    if (timer) clearTimeout(timer);
    timer = undefined;
    const batch = buf;
    buf = [];
    bytes = 0;
    chain = chain.then(async () => {
      if (batch.length === 0) return;
      try {
        const changed = await ctx.store.withTransaction((tx) => appendLogs(tx, batch, ctx.options.logLimitBytes));
        for (const jobId of changed) ctx.events.emit('job.logs', { jobId });
      } catch (e) {
        ctx.log.error({ err: e, chunks: batch.length }, 'could not store job logs');
      }
    });
    return chain;
  };

  return {
    push(c) {
      buf.push(c);
      bytes += c.data.length;
      if (bytes > 4 * 1024 * 1024 || buf.length > 2000) void flush();
      else timer ??= setTimeout(() => void flush(), delayMs);
    },
    flush,
    close: flush,
  };
}
