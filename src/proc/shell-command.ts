/**
 * An operator's command run through `sh -c` (a host's sleep command on the agent; a wake or status command
 * on the server): its exit, the tail of its output for the error, and a kill after a timeout. Shared by the
 * agent and the server, which import nothing of each other; src/proc imports only core.
 */
import { spawn } from 'node:child_process';

export interface ShellCommandResult {
  code: number | null;
  signal: string | null;
  /** The last 4,000 characters of stdout and stderr together, trimmed. */
  output: string;
  timedOut: boolean;
}

/** Runs `command` through `/bin/sh -c` with `env` over the process's own; never rejects. */
export function runShellCommand(command: string, env: Record<string, string>, timeoutMs: number): Promise<ShellCommandResult> {
  return new Promise((resolve) => {
    const p = spawn('/bin/sh', ['-c', command], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    const keep = (d: Buffer) => {
      output = (output + d.toString()).slice(-4000);
    };
    p.stdout.on('data', keep);
    p.stderr.on('data', keep);
    let timedOut = false;
    const t = setTimeout(() => {
      timedOut = true;
      p.kill('SIGKILL');
    }, timeoutMs);
    p.on('error', (e) => keep(Buffer.from(e.message)));
    p.on('close', (code, signal) => {
      clearTimeout(t);
      resolve({ code, signal, output: output.trim(), timedOut });
    });
  });
}

/** One line for a failed command: how it ended and what it printed. */
export function commandFailure(what: string, r: ShellCommandResult, timeoutMs: number): string {
  const how = r.timedOut ? `did not finish within ${Math.round(timeoutMs / 1000)} s` : r.signal ? `was killed by ${r.signal}` : `exited ${r.code}`;
  return `${what} ${how}${r.output ? `; its output: ${r.output}` : ' (no output)'}`;
}
