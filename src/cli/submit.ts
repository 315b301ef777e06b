/**
 * Submitting a job and following it to the end: the one code path `kiln run` uses whether the server is
 * remote (KILN_SERVER) or started in-process (startUp).
 */
import type { Writable } from 'node:stream';
import { EXIT } from '../core/exit-codes.ts';
import type { Job } from '../core/job.ts';
import { API, type JobOut, type JobSubmit } from '../core/http-contract.ts';
import { submitJob, type ApiClient, type LogEnd } from './api-client.ts';

export type { JobSubmit };

export interface FollowIo {
  stdout: Writable;
  stderr: Writable;
  /** Called once the server accepted the job. */
  onSubmitted?(job: Job): void;
  /** kiln's own notes (log limit reached, job requeued after a lost host). */
  note?(line: string): void;
  /** Aborting cancels the job on the server and waits for it to end. */
  signal?: AbortSignal;
}

/** The process exit code for a finished job (see src/core/exit-codes.ts). */
export function exitCodeOf(end: LogEnd): number {
  switch (end.state) {
    case 'succeeded':
      return 0;
    case 'failed':
      if (end.exitCode !== null) return end.exitCode;
      // The VM never ran the job: kiln's own problem on the host (image, size) or a VM that failed.
      return /^(image|input|vm\.too_large|vm\.unsupported_arch|vm\.bad_id)/.test(end.error?.code ?? '') ? EXIT.kilnError : EXIT.vmFailed;
    case 'timed_out':
      return EXIT.timedOut;
    case 'cancelled':
      return EXIT.sigint;
    case 'lost':
      return EXIT.vmFailed;
    default:
      return EXIT.kilnError;
  }
}

const write = (w: Writable, b: Buffer): Promise<void> =>
  new Promise((resolve, reject) => {
    const ok = w.write(b, (e) => (e ? reject(e) : undefined));
    if (ok) resolve();
    else w.once('drain', resolve);
  });

/** Submits `job`, streams its stdout and stderr as they come, and resolves with its exit code and end. */
export async function submitAndFollow(client: ApiClient, job: JobSubmit, io: FollowIo): Promise<{ exitCode: number; job: Job; end: LogEnd }> {
  const submitted = await submitJob(client, job);
  io.onSubmitted?.(submitted);
  let lastAttempt = 1;
  const cancel = () => void client.call(API.cancelJob, { params: { id: submitted.id } }).catch(() => {});
  io.signal?.addEventListener('abort', cancel, { once: true });
  try {
    const end = await client.logs(submitted.id, {
      follow: true,
      async onChunk(stream, data, attempt) {
        if (attempt !== lastAttempt) {
          io.note?.(`job ${submitted.id}: its host was lost before it started; running it again (attempt ${attempt})`);
          lastAttempt = attempt;
        }
        if (stream === 'stdout') await write(io.stdout, data);
        else if (stream === 'stderr') await write(io.stderr, data);
        else io.note?.(data.toString().trimEnd());
      },
    });
    return { exitCode: exitCodeOf(end), job: submitted, end };
  } finally {
    io.signal?.removeEventListener('abort', cancel);
  }
}
