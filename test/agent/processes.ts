/**
 * Real kiln processes for tests: the built CLI with the node flags of the installed `kiln`, killed and
 * reaped by the test.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { once } from 'node:events';
import { createServer } from 'node:net';
import { fileURLToPath } from 'node:url';
import { KILN_BIN, KILN_NODE_ARGS } from '../support/kiln.ts';

const root = fileURLToPath(new URL('../../', import.meta.url));

export interface KilnProcess {
  proc: ChildProcess;
  output(): string;
  /** Resolves when a line matching `re` appears on stdout or stderr. */
  waitForOutput(re: RegExp, timeoutMs?: number): Promise<string>;
  kill(signal?: NodeJS.Signals): Promise<void>;
}

const live = new Set<ChildProcess>();

/**
 * A kiln process through the built CLI (bin/kiln.js → dist/), as users run it; it starts in a fraction of
 * the time tsx takes to compile the sources (over 30 s at load 10 here, which made process tests flake).
 * dist/ is rebuilt first if any source is newer (`npm test` builds before it runs, so on CI this never rebuilds).
 */
export function spawnKiln(args: string[], env: Record<string, string> = {}): KilnProcess {
  return spawnBuiltKiln(args, env);
}

/** The same as spawnKiln (kept for the tests that name it). */
export function spawnBuiltKiln(args: string[], env: Record<string, string> = {}): KilnProcess {
  ensureFreshBuild();
  return spawnWith([...KILN_NODE_ARGS, KILN_BIN, ...args], env);
}

let fresh = false;
/** Rebuilds dist/ when a source is newer (the CLI runs from dist/). */
export function ensureFreshBuild(): void {
  if (fresh) return;
  const newest = (dir: string): number => {
    let t = 0;
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const p = join(dir, e.name);
      t = Math.max(t, e.isDirectory() ? newest(p) : statSync(p).mtimeMs);
    }
    return t;
  };
  const built = join(root, 'dist', 'kiln.mjs');
  if (!existsSync(built) || newest(join(root, 'src')) > statSync(built).mtimeMs) {
    const r = spawnSync(process.execPath, ['scripts/build.mjs'], { cwd: root, encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`npm run build failed:\n${r.stderr}`);
  }
  fresh = true;
}

function spawnWith(argv: string[], env: Record<string, string>): KilnProcess {
  const proc = spawn(process.execPath, argv, {
    cwd: root,
    env: { ...process.env, KILN_LOG_LEVEL: process.env.KILN_TEST_LOG ?? 'warn', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  live.add(proc);
  proc.on('exit', () => live.delete(proc));
  let text = '';
  const waiters = new Set<() => void>();
  const onData = (d: Buffer) => {
    text += d.toString();
    for (const w of [...waiters]) w();
  };
  proc.stdout!.on('data', onData);
  proc.stderr!.on('data', onData);
  return {
    proc,
    output: () => text,
    waitForOutput(re, timeoutMs = 90_000) {
      return new Promise((resolve, reject) => {
        const check = () => {
          const m = re.exec(text);
          if (m) {
            waiters.delete(check);
            clearTimeout(t);
            resolve(m[0]);
          }
        };
        const t = setTimeout(() => {
          waiters.delete(check);
          reject(new Error(`no output matching ${re} within ${timeoutMs} ms; output so far:\n${text.slice(-3000)}`));
        }, timeoutMs);
        waiters.add(check);
        check();
        proc.once('exit', () => {
          if (waiters.has(check)) {
            waiters.delete(check);
            clearTimeout(t);
            reject(new Error(`process exited before printing ${re}; output:\n${text.slice(-3000)}`));
          }
        });
      });
    },
    async kill(signal = 'SIGTERM') {
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      const exited = once(proc, 'exit');
      proc.kill(signal);
      await exited;
    },
  };
}

/** Kills every process a test spawned and did not reap (after-hook). */
export async function killAll(): Promise<void> {
  await Promise.all(
    [...live].map(async (p) => {
      if (p.exitCode !== null || p.signalCode !== null) return;
      const exited = once(p, 'exit');
      p.kill('SIGKILL');
      await exited;
    }),
  );
}

/** Runs one kiln command (the built CLI, as spawnKiln) to its end and collects its output. */
export function runKilnCommand(args: string[], env: Record<string, string>): Promise<{ code: number | null; stdout: string; stderr: string }> {
  ensureFreshBuild();
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [...KILN_NODE_ARGS, KILN_BIN, ...args], { cwd: root, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    p.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

export async function freePort(): Promise<number> {
  const s = createServer();
  s.listen(0, '127.0.0.1');
  await once(s, 'listening');
  const port = (s.address() as { port: number }).port;
  s.close();
  await once(s, 'close');
  return port;
}
