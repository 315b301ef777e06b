import type { Command } from 'commander';
import { randomBytes } from 'node:crypto';
import { archFromNode, parseArch, type Arch } from '../core/arch.ts';
import { KilnError, toKilnError } from '../core/errors.ts';
import { EXIT } from '../core/exit-codes.ts';
import { hostname } from 'node:os';
import { formatDuration, formatSize, parseDuration, parseSize } from '../core/sizes.ts';
import { imageBuildHint, makeImageStore, shortId, type ImageManifest } from '../image/store.ts';
import { finishJobCache, openJobCache } from '../vm/cache-job.ts';
import { makeCacheStore, validateCacheKey, type CacheLease } from '../vm/cache-store.ts';
import type { VmResult } from '../vm/driver.ts';
import type { VmSpec } from '../vm/driver.ts';
import { parseAllowEntry } from '../vm/egress.ts';
import { MIRROR_GUEST_ADDRESS, mirrorForward } from '../vm/forwards.ts';
import { makeQemuDriver } from '../vm/qemu-driver.ts';
import { loadCommonConfig, loadVmConfig, remoteServer } from './config.ts';
import type { Output } from './output.ts';

interface RunFlags {
  arch?: string;
  cpus: string;
  memory: string;
  disk: string;
  timeout: string;
  env: string[];
  image?: string;
  workdir?: string;
  network: string;
  registryMirror?: string;
  egressAllow?: string[];
  egress?: string;
  verbose?: boolean;
  cold?: boolean;
  dataDir?: string;
  cache?: string;
  cacheReadonly?: boolean;
  cacheSize?: string;
}

export interface RunRequest {
  arch: Arch;
  cpus: number;
  memoryBytes: number;
  diskBytes: number;
  timeoutMs: number;
  env: Record<string, string>;
  image?: string;
  cwd?: string;
  network: 'none' | 'user';
  registryMirror?: string;
  command: string[];
  /** A warm cache disk at /cache; written back after a successful job unless read-only. */
  cache?: { key: string; write: boolean; sizeBytes?: number };
}

/** Turns flags into a request, reporting bad input as KilnErrors before anything starts. */
export function parseRunFlags(flags: RunFlags, command: string[], defaultArch: Arch): RunRequest {
  const cpus = Number(flags.cpus);
  if (!Number.isInteger(cpus) || cpus < 1) throw new KilnError('input.bad_cpus', `--cpus "${flags.cpus}" is not a whole number of CPUs`, { hint: 'e.g. --cpus 2' });
  const env: Record<string, string> = {};
  for (const kv of flags.env) {
    const i = kv.indexOf('=');
    if (i <= 0) throw new KilnError('input.bad_env', `--env "${kv}" is not NAME=VALUE`, { hint: 'e.g. --env GREETING="hello world"' });
    env[kv.slice(0, i)] = kv.slice(i + 1);
  }
  if (flags.network !== 'none' && flags.network !== 'user') {
    throw new KilnError('input.bad_network', `--network "${flags.network}" is not known`, { hint: 'use none (default: no route out) or user (outbound NAT)' });
  }
  // --registry-mirror is checked by the VM driver (input.bad_registry_mirror) before anything starts.
  if (flags.cache !== undefined) validateCacheKey(flags.cache);
  if ((flags.cacheReadonly || flags.cacheSize !== undefined) && flags.cache === undefined) {
    throw new KilnError('input.cache_flag_without_cache', '--cache-readonly and --cache-size need --cache KEY', { hint: 'e.g. --cache deps --cache-readonly' });
  }
  if (command.length === 0) throw new KilnError('input.no_command', 'no command to run', { hint: 'put the command after --, e.g. `kiln run -- uname -a`' });
  return {
    arch: flags.arch ? parseArch(flags.arch) : defaultArch,
    cpus,
    memoryBytes: parseSize(flags.memory, '--memory'),
    diskBytes: parseSize(flags.disk, '--disk'),
    timeoutMs: parseDuration(flags.timeout, '--timeout'),
    env,
    ...(flags.image ? { image: flags.image } : {}),
    ...(flags.workdir ? { cwd: flags.workdir } : {}),
    network: flags.network,
    ...(flags.registryMirror !== undefined ? { registryMirror: flags.registryMirror } : {}),
    command,
    ...(flags.cache !== undefined
      ? { cache: { key: flags.cache, write: !flags.cacheReadonly, ...(flags.cacheSize !== undefined ? { sizeBytes: parseSize(flags.cacheSize, '--cache-size') } : {}) } }
      : {}),
  };
}

const collect = (v: string, acc: string[]) => [...acc, v];

export function registerRun(program: Command, out: () => Output): void {
  program
    .command('run')
    .description('run a command in a fresh, single-use microVM and stream its output')
    .usage('[options] -- CMD [ARGS...]')
    .option('--arch <arch>', 'guest architecture: amd64 or arm64 (default: the host)')
    .option('--cpus <n>', 'virtual CPUs', '1')
    .option('--memory <size>', 'guest memory', '512M')
    .option('--disk <size>', 'scratch disk, mounted at /work (copy-on-write, deleted with the VM)', '10G')
    .option('--timeout <duration>', 'kill the VM after this long (boot included)', '10m')
    .option('-e, --env <NAME=VALUE>', 'environment variable for the command (repeatable)', collect, [])
    .option('-w, --workdir <dir>', 'working directory in the guest', '/work')
    .option('--image <id>', 'guest image id (see `kiln image ls`) or profile name; default: the newest minimal image')
    .option('--network <mode>', 'none: no route out of the guest; user: the internet through the egress filter (never the host, its networks, private or link-local addresses)', 'none')
    .option('--egress-allow <cidr|name>', 'with --network user: also reach this address, CIDR or host name, though closed by default (repeatable; env KILN_EGRESS_ALLOW)', collect, [])
    .option('--egress <mode>', 'filtered (default) or unfiltered: no egress filter at all, for hosts where kiln is not root (env KILN_EGRESS)')
    .option('--registry-mirror <host:port>', 'registry mirror for Docker and buildah in the ci image: one on the host\'s loopback (127.0.0.1:PORT) is forwarded to the guest at 10.0.2.100:5000, with or without --network; other addresses are passed as given')
    .option('-v, --verbose', 'print a timing breakdown (prepare, boot, run, teardown) and whether the VM started warm or cold')
    .option('--cold', 'boot the VM from scratch instead of restoring it from a warm-start snapshot')
    .option('--cache <key>', 'mount the warm cache KEY at /cache (copy-on-write); a job that succeeds saves it as the next version (docs/caches.md)')
    .option('--cache-readonly', 'with --cache: use the cache but never save this job\'s changes')
    .option('--cache-size <size>', 'with --cache: the cache\'s size when this job creates it (default 4G; a full cache fails writes with ENOSPC)')
    .option('--data-dir <dir>', 'kiln data directory (env KILN_DATA_DIR)')
    .argument('[command...]', 'the command and its arguments')
    .addHelpText(
      'after',
      `
Exit status: the command's own (0-255), or
  ${EXIT.vmFailed}  the VM failed to boot or died without reporting an exit status
  ${EXIT.timedOut}  --timeout expired; the VM was killed
  ${EXIT.kilnError}  kiln could not start the job (bad input, missing package, damaged image)
  ${EXIT.notFound}  the command was not found in the guest
  ${EXIT.sigint}/${EXIT.sigterm}  kiln was interrupted (SIGINT/SIGTERM); the VM was destroyed`,
    )
    .action(async (command: string[], flags: RunFlags) => {
      process.exitCode = await runCommand(command, flags, out());
    });
}

async function runCommand(command: string[], flags: RunFlags, o: Output): Promise<number> {
  const cfg = loadCommonConfig(flags);
  let req: RunRequest;
  try {
    const host = archFromNode(process.arch);
    if (!host) throw new KilnError('host.unsupported_arch', `kiln does not run on ${process.arch} hosts`, { hint: 'use an x86-64 or arm64 host' });
    req = parseRunFlags(flags, command, host);
  } catch (e) {
    throw withExit(e, EXIT.kilnError);
  }
  if (remoteServer()) return runOnServer(req, cfg.dataDir, o);
  const vmCfg = loadVmConfig(flags.egress ? { ...process.env, KILN_EGRESS: flags.egress } : process.env);
  const egress = { allow: [...vmCfg.egress.allow, ...(flags.egressAllow ?? [])], unfiltered: vmCfg.egress.unfiltered };
  for (const a of egress.allow) parseAllowEntry(a);
  const driver = makeQemuDriver({
    dataDir: cfg.dataDir,
    accel: vmCfg.accel,
    ...(vmCfg.bootTimeoutMs ? { bootTimeoutMs: vmCfg.bootTimeoutMs } : {}),
    egress,
    snapshots: vmCfg.snapshotBudgetBytes !== undefined ? { budgetBytes: vmCfg.snapshotBudgetBytes } : {},
  });
  const store = makeImageStore(cfg.dataDir);
  const caches = req.cache
    ? makeCacheStore(cfg.dataDir, {
        ...(vmCfg.cacheBudgetBytes !== undefined ? { budgetBytes: vmCfg.cacheBudgetBytes } : {}),
        ...(vmCfg.cacheMaxIdleMs !== undefined ? { maxIdleMs: vmCfg.cacheMaxIdleMs } : {}),
        ...(vmCfg.holdCacheCommits ? { beforePointer: (key, v) => holdCommit(o, key, v) } : {}),
      })
    : undefined;
  let lease: CacheLease | undefined;
  try {
    // What dead kilns left behind is swept once this VM is up (the sweep lists the egress table with a
    // blocking `nft` call: done while the job runs, it is off the start's critical path), or at once if the
    // VM cannot start (a leftover may be why).
    let swept: Promise<void> | undefined;
    const sweep = () =>
      (swept ??= driver.sweep().then(
        ({ removed }) => void (removed.length > 0 && o.info(`removed ${removed.length} VM(s) an earlier kiln left behind`)),
        (e: unknown) => o.info(`could not remove what an earlier kiln left behind: ${toKilnError(e).message}`),
      ));
    let image: ImageManifest | undefined = req.image ? store.resolve(req.image, req.arch) : store.newest('minimal', req.arch);
    if (!image && req.image && req.image !== 'minimal') {
      throw new KilnError('image.not_found', `no ${req.arch} image "${req.image}"`, { hint: imageBuildHint(req.image, req.arch) });
    }
    if (!image) {
      o.info(`no minimal ${req.arch} guest image yet: building it now (first run only)`);
      // Image building (and its debootstrap code) loads only when a build is needed.
      const { buildImage } = await import('./image.ts');
      image = await buildImage(cfg.dataDir, store, req.arch, 'minimal', o);
    }
    const accel = driver.accelFor(req.arch);
    if (accel.accel === 'tcg') o.info(`emulated run: ${accel.reason}`);
    else if (flags.verbose) o.info(`accelerator: ${accel.reason}`);

    const id = `run-${randomBytes(5).toString('hex')}`;
    if (caches && req.cache) {
      lease = await openJobCache(caches, req.cache, id);
      if (flags.verbose) o.info(`cache ${req.cache.key}: ${lease.hit ? `version ${lease.version}` : 'empty (first use)'}${req.cache.write ? '' : ', read-only'}`);
    }
    const vm = await startOrSweep(sweep, () => driver.start(
      {
        id,
        arch: req.arch,
        cpus: req.cpus,
        memoryBytes: req.memoryBytes,
        diskBytes: req.diskBytes,
        image: store.toRef(image),
        job: { command: req.command, env: req.env, ...(req.cwd ? { cwd: req.cwd } : {}) },
        timeoutMs: req.timeoutMs,
        network: req.network,
        ...mirrorSpec(req.registryMirror),
        ...(flags.cold ? { warm: false } : {}),
        ...(lease ? { cacheDisk: lease.overlayPath, cacheBytes: lease.sizeBytes } : {}),
      },
      { stdout: (c) => process.stdout.write(c), stderr: (c) => process.stderr.write(c), note: (line) => o.info(line) },
    ));
    void sweep();
    let signalled: NodeJS.Signals | undefined;
    const onSignal = (sig: NodeJS.Signals) => {
      if (signalled) return;
      signalled = sig;
      void vm.kill(`kiln received ${sig}`);
    };
    const signals: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];
    for (const s of signals) process.on(s, onSignal);
    const result = await vm.done;
    for (const s of signals) process.off(s, onSignal);
    await sweep();
    if (caches && lease && req.cache) {
      const l = lease;
      lease = undefined;
      const c = await finishJobCache(caches, l, req.cache, result, { jobId: id, by: `kiln run on ${hostname()}` });
      if (c.committed) o.info(`cache ${c.key}: saved as version ${c.committed.id} (${formatSize(c.committed.bytes)}, ${c.committed.commitSeconds?.toFixed(2)} s)`);
      else if (c.notSaved) o.info(`cache ${c.key}: not saved: ${c.notSaved}`);
    }
    if (flags.verbose) printTimings(o, result, shortId(image.digest));
    if (signalled) {
      o.info(`interrupted by ${signalled}: the VM was destroyed`);
      return signalled === 'SIGINT' ? EXIT.sigint : EXIT.sigterm;
    }
    return exitCodeFor(result, req, o);
  } catch (e) {
    throw withExit(e, EXIT.kilnError);
  } finally {
    lease?.release();
  }
}

/** Starts the VM; if that fails, sweeps first (what an earlier kiln left may be the cause) and rethrows. */
async function startOrSweep<T>(sweep: () => Promise<void>, start: () => Promise<T>): Promise<T> {
  try {
    return await start();
  } catch (e) {
    await sweep();
    throw e;
  }
}

/** Test-only (KILN_TEST_HOLD_CACHE_COMMIT=1): the commit waits forever before its pointer's rename. */
function holdCommit(o: Output, key: string, version: string): Promise<void> {
  o.info(`holding the commit of cache ${key} version ${version}`);
  return new Promise(() => undefined);
}

/** A mirror on the host's loopback is forwarded to the guest at 10.0.2.100:5000; any other address is passed as given. */
function mirrorSpec(mirror: string | undefined): Pick<VmSpec, 'forwards' | 'registryMirror'> {
  if (!mirror) return {};
  const fwd = mirrorForward(mirror);
  return fwd ? { forwards: [fwd], registryMirror: MIRROR_GUEST_ADDRESS } : { registryMirror: mirror };
}

/** With KILN_SERVER set, the job goes through the control plane's API and runs on one of its hosts. */
async function runOnServer(req: RunRequest, dataDir: string, o: Output): Promise<number> {
  const [{ clientFrom }, { submitAndFollow }] = await Promise.all([import('./fleet-client.ts'), import('./submit.ts')]);
  const client = clientFrom({ dataDir });
  const ac = new AbortController();
  let signalled: NodeJS.Signals | undefined;
  const onSignal = (sig: NodeJS.Signals) => {
    signalled ??= sig;
    ac.abort();
  };
  const signals: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];
  for (const s of signals) process.on(s, onSignal);
  try {
    const r = await submitAndFollow(
      client,
      {
        arch: req.arch,
        cpus: req.cpus,
        memory: req.memoryBytes,
        disk: req.diskBytes,
        timeout: req.timeoutMs,
        command: req.command,
        env: req.env,
        network: req.network,
        ...(req.cwd ? { cwd: req.cwd } : {}),
        ...(req.image ? { image: req.image } : {}),
        ...(req.cache ? { cache: { key: req.cache.key, write: req.cache.write, ...(req.cache.sizeBytes !== undefined ? { size: req.cache.sizeBytes } : {}) } } : {}),
      },
      { stdout: process.stdout, stderr: process.stderr, signal: ac.signal, onSubmitted: (j) => o.info(`job ${j.id} queued on ${remoteServer()}`), note: (l) => o.info(l) },
    );
    if (signalled) {
      o.info(`interrupted by ${signalled}: the job was cancelled`);
      return signalled === 'SIGINT' ? EXIT.sigint : EXIT.sigterm;
    }
    return r.exitCode;
  } finally {
    for (const s of signals) process.off(s, onSignal);
  }
}

function exitCodeFor(r: VmResult, req: RunRequest, o: Output): number {
  switch (r.outcome) {
    case 'exited':
      return r.exitCode;
    case 'timed_out':
      o.warn(`the job timed out after ${formatDuration(req.timeoutMs)}; the VM was destroyed [vm.timeout]`);
      return EXIT.timedOut;
    case 'killed':
      o.warn(`the VM was stopped: ${r.reason}`);
      return EXIT.vmFailed;
    case 'boot_failed':
    case 'crashed':
      o.warn(`${r.message} [${r.code}]`);
      if (r.consoleTail.length > 0) {
        o.warn('last lines of the guest console:');
        for (const l of r.consoleTail) o.warn(`  | ${l}`);
      }
      return EXIT.vmFailed;
    default: {
      const never: never = r;
      throw new Error(`unknown outcome ${JSON.stringify(never)}`);
    }
  }
}

function printTimings(o: Output, r: VmResult, image: string): void {
  const t = r.timings;
  const ms = (n: number) => `${Math.round(n)} ms`;
  o.info(`timings (image ${image}, ${t.start === 'warm' ? 'warm start: restored from a snapshot' : 'cold start: booted'}):`);
  if (t.snapshotBuildMs !== undefined) o.info(`  snapshot  ${ms(t.snapshotBuildMs)} (built once for this image and VM shape)`);
  if (t.launchedAtMs !== undefined) o.info(`  start     ${ms(t.launchedAtMs - t.prepareMs - (t.snapshotBuildMs ?? 0))} (node start, config, image lookup)`);
  o.info(`  prepare   ${ms(t.prepareMs)}`);
  o.info(`  boot      ${ms(t.bootMs)}${t.guestUptimeAtInitMs !== undefined ? ` (guest uptime at init: ${ms(t.guestUptimeAtInitMs)})` : ''}`);
  o.info(`  run       ${ms(t.runMs)}`);
  o.info(`  teardown  ${ms(t.teardownMs)}`);
}

function withExit(e: unknown, code: number): unknown {
  if (e instanceof KilnError && e.details?.exitCode === undefined) {
    return new KilnError(e.code, e.message, { ...(e.hint ? { hint: e.hint } : {}), cause: e.cause, kind: e.kind, details: { ...e.details, exitCode: code } });
  }
  return e;
}
