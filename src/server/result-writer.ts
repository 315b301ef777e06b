/**
 * Batches agents' job results into two statements per few milliseconds (transitionJobs). Before each
 * batch, the phases and logs received earlier are stored, so a job is never final before its output.
 */
import type { JobResultMsg } from '../core/agent-protocol.ts';
import type { Job } from '../core/job.ts';
import type { JobState } from '../core/job-state.ts';
import { transitionJobs } from '../store/jobs.ts';
import type { ServerContext } from './context.ts';
import { resultEvent } from './result-event.ts';

export interface ResultWriter {
  /** Stores a result from host `hostId`; resolves with the change it made (undefined: none applied). */
  apply(hostId: number, r: JobResultMsg): Promise<{ job: Job; from: JobState } | undefined>;
}

export function makeResultWriter(ctx: ServerContext, before: () => Promise<void>, delayMs = 5): ResultWriter {
  type Item = { hostId: number; r: JobResultMsg; done(v: { job: Job; from: JobState } | undefined): void; fail(e: unknown): void };
  let buf: Item[] = [];
  let timer: NodeJS.Timeout | undefined;
  let chain: Promise<void> = Promise.resolve();
  const flush = () => {
    timer = undefined;
    const batch = buf;
    buf = [];
    chain = chain.then(async () => {
      try {
        await before();
        const out = await transitionJobs(
          ctx.store.db,
          batch.map((it) => ({
            jobId: it.r.jobId,
            attempt: it.r.attempt,
            choose: (job: Job) => (job.hostId === it.hostId ? resultEvent(it.r, job) : undefined),
          })),
        );
        batch.forEach((it, i) => it.done(out[i]));
      } catch (e) {
        for (const it of batch) it.fail(e);
      }
    });
  };
  return {
    apply(hostId, r) {
      return new Promise((done, fail) => {
        buf.push({ hostId, r, done, fail });
        if (buf.length >= 1000) {
          if (timer) clearTimeout(timer);
          flush();
        } else timer ??= setTimeout(flush, delayMs);
      });
    },
  };
}
