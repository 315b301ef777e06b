/**
 * The stand-in Actions runner (CI has no real one): started exactly as the real runner is, with the JIT
 * config, it decodes the config the way run.sh does (base64 JSON map of base64 files), connects to the
 * GitHub double, takes one matching job, runs it and exits; if its registration is removed it exits 0, as
 * an ephemeral runner whose job vanished does.
 */
import type { GuestProgram } from '../../../src/vm/memory-driver.ts';

export const STAND_IN_NAME = 'actions-runner-standin';

const sleep = (ms: number, signal: AbortSignal) =>
  new Promise<void>((resolve) => {
    const t = setTimeout(resolve, ms);
    signal.addEventListener('abort', () => (clearTimeout(t), resolve()), { once: true });
  });

export const standInRunner: GuestProgram = async ({ args, env, stdout, stderr, signal }) => {
  const i = args.indexOf('--jitconfig');
  const encoded = i >= 0 ? args[i + 1] : env.KILN_RUNNER_JITCONFIG;
  if (!encoded) {
    stderr('usage: run.sh --jitconfig <encoded>\n');
    return 2;
  }
  let runner: { agentId: number; serverUrl: string };
  let secret: string;
  try {
    const files = JSON.parse(Buffer.from(encoded, 'base64').toString()) as Record<string, string>;
    runner = JSON.parse(Buffer.from(files['.runner'] ?? '', 'base64').toString()) as typeof runner;
    secret = (JSON.parse(Buffer.from(files['.credentials'] ?? '', 'base64').toString()) as { data: { secret: string } }).data.secret;
  } catch {
    stderr('the JIT config could not be decoded\n');
    return 1;
  }
  const post = async (path: string, body: unknown) => {
    const r = await fetch(`${runner.serverUrl}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body), signal });
    return { status: r.status, body: (await r.json()) as { exit?: string; job?: number; ms?: number } };
  };
  try {
    for (;;) {
      const c = await post('/_runner/connect', { runnerId: runner.agentId, secret });
      if (c.status === 200) break;
      if (c.status === 404 || c.status === 401) {
        stderr(`runner registration refused (${c.status})\n`);
        return 1;
      }
      await sleep(100, signal);
      if (signal.aborted) return 143;
    }
    stdout('Connected to GitHub\nListening for Jobs\n');
    for (;;) {
      const n = await post('/_runner/next', { runnerId: runner.agentId });
      if (n.body.exit) {
        stdout(`Runner removed (${n.body.exit}); exiting\n`);
        return 0;
      }
      if (n.body.job !== undefined) {
        stdout(`Running job ${n.body.job}\n`);
        await sleep(n.body.ms ?? 0, signal);
        if (signal.aborted) return 143;
        await post('/_runner/done', { runnerId: runner.agentId, jobId: n.body.job });
        stdout(`Job ${n.body.job} completed with result: Succeeded\n`);
        return 0;
      }
    }
  } catch (e) {
    if (signal.aborted) return 143;
    stderr(`runner failed: ${(e as Error).message}\n`);
    return 1;
  }
};
