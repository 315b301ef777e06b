import { spawn, spawnSync } from 'node:child_process';

export { which } from '../vm/files.ts';

/** Runs a command with inherited output; resolves with its exit code. */
export function runInherit(cmd: string, args: string[], env?: NodeJS.ProcessEnv): Promise<number> {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { stdio: 'inherit', env: env ?? process.env });
    p.on('error', reject);
    p.on('exit', (code, sig) => resolve(code ?? (sig ? 128 : 1)));
  });
}

export function capture(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  return r.status === 0 ? r.stdout : '';
}
