/** `kiln jobs ls|get|cancel|logs|submit`. */
import type { Command } from 'commander';
import { API } from '../core/http-contract.ts';
import { KilnError } from '../core/errors.ts';
import { formatSize } from '../core/sizes.ts';
import { addClientOptions, clientFrom, type ClientFlags } from './fleet-client.ts';
import { table, type Output } from './output.ts';
import { submitJob } from './api-client.ts';
import { exitCodeOf, submitAndFollow } from './submit.ts';

const collect = (v: string, acc: string[] = []) => [...acc, v];

function ago(iso: string | null): string {
  if (!iso) return '-';
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  return s < 120 ? `${s}s ago` : s < 7200 ? `${Math.round(s / 60)}m ago` : `${Math.round(s / 3600)}h ago`;
}

export function registerJobs(program: Command, out: () => Output): void {
  const jobs = program.command('jobs').description('list, inspect, cancel and follow jobs on a kiln server');

  addClientOptions(jobs.command('ls').description('list jobs, newest first'))
    .option('--state <states>', 'only these states (comma-separated)')
    .option('--tenant <tenant>', 'only this tenant')
    .option('--host <id>', 'only jobs placed on this host id')
    .option('--search <text>', 'a job id, or text in the command, labels, image, tenant or error message')
    .option('--limit <n>', 'at most this many', '50')
    .option('--json', 'print JSON')
    .action(async (f: ClientFlags & { state?: string; tenant?: string; host?: string; search?: string; limit: string; json?: boolean }) => {
      const query = {
        limit: f.limit,
        ...(f.state ? { state: f.state } : {}),
        ...(f.tenant ? { tenant: f.tenant } : {}),
        ...(f.host ? { host: f.host } : {}),
        ...(f.search ? { q: f.search } : {}),
      };
      const { jobs: list } = await clientFrom(f).call(API.listJobs, { query });
      const o = out();
      if (f.json) return o.data(JSON.stringify(list, null, 2));
      o.data(
        table([
          ['ID', 'STATE', 'ARCH', 'SIZE', 'HOST', 'TENANT', 'CREATED', 'COMMAND'],
          ...list.map((j) => [
            String(j.id),
            j.state + (j.exitCode !== null && j.state === 'failed' ? ` (${j.exitCode})` : ''),
            j.requirements.arch,
            `${j.requirements.cpus}cpu/${formatSize(j.requirements.memoryBytes)}`,
            j.hostId === null ? '-' : String(j.hostId),
            j.tenant,
            ago(j.createdAt),
            j.command.join(' ').slice(0, 60),
          ]),
        ]),
      );
    });

  addClientOptions(jobs.command('get <id>').description('one job with its state transitions')).action(async (id: string, f: ClientFlags) => {
    const job = await clientFrom(f).call(API.getJob, { params: { id } });
    out().data(JSON.stringify(job, null, 2));
  });

  addClientOptions(jobs.command('cancel <id>').description('cancel a job (queued: at once; running: its VM is stopped)')).action(async (id: string, f: ClientFlags) => {
    const job = await clientFrom(f).call(API.cancelJob, { params: { id } });
    out().info(`job ${job.id}: ${job.state === 'cancelled' ? 'cancelled' : `cancel requested (it is ${job.state}; its VM is being stopped)`}`);
  });

  addClientOptions(jobs.command('logs <id>').description("print a job's output (stdout to stdout, stderr to stderr)"))
    .option('-f, --follow', 'keep streaming until the job ends; exit with its exit code')
    .action(async (id: string, f: ClientFlags & { follow?: boolean }) => {
      const o = out();
      const end = await clientFrom(f).logs(Number(id), {
        follow: f.follow === true,
        onChunk(stream, data) {
          if (stream === 'stdout') process.stdout.write(data);
          else if (stream === 'stderr') process.stderr.write(data);
          else o.info(data.toString().trimEnd());
        },
      });
      if (end.logTruncated) o.warn('the stored log hit its size limit; later output was not kept');
      if (f.follow) process.exitCode = exitCodeOf(end);
    });

  addClientOptions(jobs.command('submit').description('submit a job and follow it (like `kiln run`, but always through a server)').usage('[options] -- CMD [ARGS...]'))
    .argument('<command...>')
    .option('--label <label>', 'runs-on label such as kiln-arm64-4cpu-16gb (repeatable)', collect)
    .option('--arch <arch>', 'amd64 or arm64')
    .option('--cpus <n>', 'vCPUs')
    .option('--memory <size>', 'memory, e.g. 2G')
    .option('--disk <size>', 'scratch disk, e.g. 10G')
    .option('--timeout <duration>', 'e.g. 10m')
    .option('--env <K=V>', 'environment variable (repeatable)', collect)
    .option('--image <name>', 'guest image: minimal (default), ci, runner, or an image digest')
    .option('--network <mode>', 'none (default): only the host registry mirror at 10.0.2.100:5000; user: the internet through the egress filter')
    .option('--cwd <dir>', 'working directory inside the guest (default /work)')
    .option('--priority <n>', 'higher runs first (-100 to 100)')
    .option('--tenant <tenant>', 'tenant to account the job to')
    .option('--detach', 'print the job id and return')
    .action(async (command: string[], f: ClientFlags & { label?: string[]; arch?: string; cpus?: string; memory?: string; disk?: string; timeout?: string; env?: string[]; image?: string; network?: string; cwd?: string; priority?: string; tenant?: string; detach?: boolean }) => {
      const o = out();
      const env = Object.fromEntries((f.env ?? []).map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]));
      const body = {
        command,
        env,
        ...(f.label ? { labels: f.label } : {}),
        ...(f.arch ? { arch: f.arch } : {}),
        ...(f.cpus ? { cpus: Number(f.cpus) } : {}),
        ...(f.memory ? { memory: f.memory } : {}),
        ...(f.disk ? { disk: f.disk } : {}),
        ...(f.timeout ? { timeout: f.timeout } : {}),
        ...(f.image ? { image: f.image } : {}),
        ...(f.network ? { network: networkMode(f.network) } : {}),
        ...(f.cwd ? { cwd: f.cwd } : {}),
        ...(f.priority !== undefined ? { priority: integerFlag('--priority', f.priority) } : {}),
        ...(f.tenant ? { tenant: f.tenant } : {}),
      };
      const client = clientFrom(f);
      if (f.detach) {
        const job = await submitJob(client, body);
        return o.data(String(job.id));
      }
      const ac = new AbortController();
      const onSig = () => ac.abort();
      process.once('SIGINT', onSig);
      try {
        const r = await submitAndFollow(client, body, { stdout: process.stdout, stderr: process.stderr, signal: ac.signal, onSubmitted: (j) => o.info(`job ${j.id} queued`), note: (l) => o.info(l) });
        process.exitCode = r.exitCode;
      } finally {
        process.off('SIGINT', onSig);
      }
    });
}

function networkMode(v: string): 'none' | 'user' {
  if (v !== 'none' && v !== 'user') throw new KilnError('input.bad_network', `--network "${v}" is not known`, { hint: 'use none (only the registry mirror) or user (the internet through the egress filter)' });
  return v;
}

function integerFlag(flag: string, v: string): number {
  if (!/^-?[0-9]{1,4}$/.test(v)) throw new KilnError('input.bad_number', `${flag} "${v}" is not a whole number`, { hint: `e.g. ${flag} 10` });
  return Number(v);
}
