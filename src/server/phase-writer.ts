/** Batches agents' phase reports (booting, running) into one statement per short interval. */
import { applyPhases, type PhaseUpdate } from '../store/jobs.ts';
import type { ServerContext } from './context.ts';

export interface PhaseWriter {
  push(u: PhaseUpdate): void;
  /** Resolves once everything pushed so far is stored (results flush this first, to keep order). */
  flush(): Promise<void>;
}

export function makePhaseWriter(ctx: ServerContext, delayMs = 5): PhaseWriter {
  let buf: PhaseUpdate[] = [];
  let timer: NodeJS.Timeout | undefined;
  let chain: Promise<void> = Promise.resolve();
  const flush = (): Promise<void> => {
    if (timer) clearTimeout(timer);
    timer = undefined;
    const batch = buf;
    buf = [];
    chain = chain.then(async () => {
      if (batch.length === 0) return;
      try {
        for (const { job, booted } of await applyPhases(ctx.store.db, batch)) {
          if (booted) ctx.events.emit('job.state', { job: { ...job, state: 'booting' }, from: 'placed', to: 'booting' });
          ctx.events.emit('job.state', { job, from: job.state === 'running' ? (booted || job.bootingAt ? 'booting' : 'placed') : 'placed', to: job.state });
        }
      } catch (e) {
        ctx.log.error({ err: e, updates: batch.length }, 'could not store job phases');
      }
    });
    return chain;
  };
  return {
    push(u) {
      buf.push(u);
      if (buf.length >= 2000) void flush();
      else timer ??= setTimeout(() => void flush(), delayMs);
    },
    flush,
  };
}
