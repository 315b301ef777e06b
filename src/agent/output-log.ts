/**
 * Job output the agent has sent but the control plane has not yet confirmed it stored: kept, numbered, until
 * a `log.ack` covers it, so a resend after a reconnect (to the same replica or another) fills exactly the
 * holes. Held in memory up to a limit; past it, chunks are appended to a file per job under the agent's data
 * directory (or dropped, and counted, when the agent has none) and read back for a resend.
 */
import { closeSync, mkdirSync, openSync, readSync, rmSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import type { AgentMessageOf } from '../core/agent-protocol.ts';

type LogMsg = AgentMessageOf<'job.log'>;

interface Held {
  seq: number;
  stream: 'stdout' | 'stderr';
  /** base64, when held in memory. */
  data?: string;
  /** Where it sits in the job's spill file, when spilled. */
  at?: { offset: number; length: number };
}

interface JobOutput {
  jobId: number;
  attempt: number;
  held: Held[];
  spill?: { path: string; fd: number; size: number };
}

export interface OutputLogOptions {
  /** Bytes (of base64 text) kept in memory across all jobs before chunks spill to disk. Default 64 MiB. */
  memoryLimitBytes?: number;
  /** Directory for spill files (created on first use); without one, chunks past the limit are dropped. */
  spillDir?: string;
}

export interface OutputLog {
  /** Keeps a chunk until it is acknowledged. */
  add(m: LogMsg): void;
  /** The control plane stored every chunk of (job, attempt) up to `seq`. */
  ack(jobId: number, attempt: number, seq: number): void;
  /** Forgets a job's output (its result was acknowledged: everything before it is stored). */
  drop(jobId: number, attempt: number): void;
  /** Every unacknowledged chunk, per job in order, for a resend after a reconnect. */
  pending(): Generator<LogMsg>;
  /** Chunks dropped because memory was full and there was nowhere to spill (since the last call). */
  takeDropped(): number;
  /** Bytes held in memory (for tests). */
  memoryBytes(): number;
  /** Removes every spill file (agent shutdown). */
  close(): void;
}

export function makeOutputLog(o: OutputLogOptions = {}): OutputLog {
  const limit = o.memoryLimitBytes ?? 64 * 1024 * 1024;
  const jobs = new Map<number, JobOutput>();
  let mem = 0;
  let dropped = 0;

  const release = (j: JobOutput, upTo: number) => {
    let n = 0;
    while (n < j.held.length && j.held[n]!.seq <= upTo) {
      mem -= j.held[n]!.data?.length ?? 0;
      n++;
    }
    if (n > 0) j.held.splice(0, n);
  };
  const closeSpill = (j: JobOutput) => {
    if (!j.spill) return;
    closeSync(j.spill.fd);
    rmSync(j.spill.path, { force: true });
    j.spill = undefined;
  };

  return {
    add(m) {
      let j = jobs.get(m.jobId);
      if (!j || j.attempt !== m.attempt) {
        if (j) {
          release(j, Infinity);
          closeSpill(j);
        }
        j = { jobId: m.jobId, attempt: m.attempt, held: [] };
        jobs.set(m.jobId, j);
      }
      if (mem + m.data.length <= limit) {
        j.held.push({ seq: m.seq, stream: m.stream, data: m.data });
        mem += m.data.length;
        return;
      }
      if (!o.spillDir) {
        dropped++;
        return;
      }
      if (!j.spill) {
        mkdirSync(o.spillDir, { recursive: true, mode: 0o700 });
        const path = join(o.spillDir, `job-${m.jobId}-${m.attempt}.out`);
        j.spill = { path, fd: openSync(path, 'w+', 0o600), size: 0 };
      }
      const buf = Buffer.from(m.data, 'latin1');
      writeSync(j.spill.fd, buf, 0, buf.length, j.spill.size);
      j.held.push({ seq: m.seq, stream: m.stream, at: { offset: j.spill.size, length: buf.length } });
      j.spill.size += buf.length;
    },
    ack(jobId, attempt, seq) {
      const j = jobs.get(jobId);
      if (!j || j.attempt !== attempt) return;
      release(j, seq);
      if (j.held.length === 0) closeSpill(j);
    },
    drop(jobId, attempt) {
      const j = jobs.get(jobId);
      if (!j || j.attempt !== attempt) return;
      release(j, Infinity);
      closeSpill(j);
      jobs.delete(jobId);
    },
    *pending() {
      for (const j of [...jobs.values()]) {
        for (const h of [...j.held]) {
          let data = h.data;
          if (data === undefined && h.at && j.spill) {
            const buf = Buffer.alloc(h.at.length);
            readSync(j.spill.fd, buf, 0, h.at.length, h.at.offset);
            data = buf.toString('latin1');
          }
          if (data !== undefined) yield { type: 'job.log', jobId: j.jobId, attempt: j.attempt, seq: h.seq, stream: h.stream, data };
        }
      }
    },
    takeDropped() {
      const n = dropped;
      dropped = 0;
      return n;
    },
    memoryBytes: () => mem,
    close() {
      for (const j of jobs.values()) closeSpill(j);
      jobs.clear();
      mem = 0;
    },
  };
}
