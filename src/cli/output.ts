/** The only place kiln prints for humans. Everything else logs through pino or returns values. */
import { KilnError, toKilnError } from '../core/errors.ts';

export interface Output {
  /** A line of kiln's own on stderr, prefixed so it never mixes with a job's output. */
  info(line: string): void;
  warn(line: string): void;
  /** Plain result data on stdout (tables, ids, JSON). */
  data(line: string): void;
  /** A progress line that rewrites itself on a terminal and prints every step otherwise. */
  progress(line: string): void;
  done(): void;
  quiet: boolean;
}

export function makeOutput(opts: { quiet?: boolean; stdout?: NodeJS.WriteStream; stderr?: NodeJS.WriteStream } = {}): Output {
  const stdout = opts.stdout ?? process.stdout;
  const stderr = opts.stderr ?? process.stderr;
  const tty = stderr.isTTY === true;
  let open = false;
  const endProgress = () => {
    if (open) stderr.write('\n');
    open = false;
  };
  return {
    quiet: opts.quiet === true,
    info(line) {
      if (opts.quiet) return;
      endProgress();
      stderr.write(`kiln: ${line}\n`);
    },
    warn(line) {
      endProgress();
      stderr.write(`kiln: warning: ${line}\n`);
    },
    data(line) {
      stdout.write(`${line}\n`);
    },
    progress(line) {
      if (opts.quiet) return;
      if (tty) {
        stderr.write(`\r\x1b[2Kkiln: ${line}`);
        open = true;
      } else stderr.write(`kiln: ${line}\n`);
    },
    done: endProgress,
  };
}

/** Prints an error the wrangler way: what went wrong, then how to fix it. Returns the exit code. */
export function printError(e: unknown, stderr: NodeJS.WritableStream = process.stderr): void {
  const err: KilnError = toKilnError(e);
  stderr.write(`kiln: error: ${printable(err.message)} [${printable(err.code)}]\n`);
  if (err.hint) stderr.write(`how to fix: ${printable(err.hint)}\n`);
  if (err.kind === 'internal' && err.cause instanceof Error && err.cause.stack && process.env.KILN_DEBUG) {
    stderr.write(`${err.cause.stack}\n`);
  }
}

/**
 * Text from the fleet (host names and labels, job commands, error messages) shown on an operator's terminal:
 * control characters, escape sequences included, become `?`, so no host or job can drive the terminal.
 */
export function printable(text: string): string {
  return text.replace(/[\u0000-\u0008\u000b-\u001f\u007f-\u009f]/g, '?');
}

export function table(rows: string[][]): string {
  rows = rows.map((r) => r.map((c) => printable(c).replace(/[\t\n]/g, ' ')));
  const widths: number[] = [];
  for (const r of rows) r.forEach((c, i) => (widths[i] = Math.max(widths[i] ?? 0, c.length)));
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i] ?? 0))).join('  ')).join('\n');
}

export { KilnError };
