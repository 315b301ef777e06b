/**
 * A kiln server with GitHub configured against the GitHub double, on a real store, with a real agent whose
 * memory-driver VMs run the stand-in runner. Logs are captured (to check that no secret is ever logged).
 */
import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { makeServer, type KilnServer } from '../../../src/server/server.ts';
import { makeGitHubClient } from '../../../src/server/github/api.ts';
import { makeAgent, type Agent } from '../../../src/agent/agent.ts';
import { memoryImageResolver } from '../../../src/agent/images.ts';
import { makeMemoryDriver } from '../../../src/vm/memory-driver.ts';
import type { VmDriver } from '../../../src/vm/driver.ts';
import type { ImageResolver } from '../../../src/agent/images.ts';
import type { CacheStore } from '../../../src/vm/cache-store.ts';
import { createToken, makeSecret } from '../../../src/store/tokens.ts';
import { makeApiClient, type ApiClient } from '../../support/test-client.ts';
import { Secret, type GitHubConfig } from '../../../src/server/github/config.ts';
import { WEBHOOK_PATH } from '../../../src/server/github/manifest.ts';
import { isTerminal, type JobState } from '../../../src/core/job-state.ts';
import { makeTestStore, type StoreKind } from '../../store/test-stores.ts';
import type { Store } from '../../../src/store/store.ts';
import { GitHubDouble } from './github-double.ts';
import { standInRunner, STAND_IN_NAME } from './stand-in-runner.ts';

export const WEBHOOK_SECRET = 'whsec-kiln-test-0123456789abcdef';
export const APP_ID = '12345';

let keys: { privatePem: string; publicKey: KeyObject } | undefined;
export function appKeys(): { privatePem: string; publicKey: KeyObject } {
  if (!keys) {
    const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    keys = { privatePem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(), publicKey };
  }
  return keys;
}

export function testGitHubConfig(apiUrl: string, over: Partial<GitHubConfig> = {}): GitHubConfig {
  return {
    appId: APP_ID,
    clientId: undefined,
    privateKey: new Secret(appKeys().privatePem),
    webhookSecrets: [new Secret(WEBHOOK_SECRET)],
    apiUrl,
    allow: ['acme'],
    forkPrAllowed: [],
    cacheWriteBranches: [],
    cacheWriteTags: [],
    runnerLevel: 'repo',
    runnerGroupId: 1,
    maxRunners: 100,
    spareRunners: 0,
    runnerImage: 'runner',
    runnerCommand: [STAND_IN_NAME],
    runnerNamePrefix: 'kiln',
    tenant: 'github',
    runnerTimeoutMs: 120_000,
    bootTimeoutMs: 3_000,
    idleGraceMs: 300,
    reconcileMs: 150,
    redeliverMs: 300,
    apiCallsPerMinute: 100_000,
    recheckMs: 60_000,
    maxFailures: 3,
    backoffBaseMs: 100,
    backoffMaxMs: 1_000,
    ...over,
  };
}

export interface GitHubHarness {
  double: GitHubDouble;
  server: KilnServer;
  store: Store;
  client: ApiClient;
  url: string;
  agent: Agent | undefined;
  /** Agents beyond the first (`extraAgents`), in order. */
  agents: Agent[];
  logs(): string;
  close(): Promise<void>;
}

export async function startGitHubHarness(
  o: {
    kind?: StoreKind;
    config?: Partial<GitHubConfig>;
    agent?: boolean;
    tokenTtlMs?: number;
    jobMs?: number;
    refreshAheadMs?: number;
    store?: Store;
    driver?: VmDriver;
    images?: ImageResolver;
    dashboardDir?: string;
    /** More hosts (host-2, host-3, …), each with its own driver and image resolver. */
    extraAgents?: { driver?: VmDriver; images?: ImageResolver }[];
    /** The first agent's warm caches (docs/caches.md); without it, runner VMs run without /cache. */
    caches?: CacheStore;
  } = {},
): Promise<GitHubHarness> {
  const { publicKey } = appKeys();
  const double = new GitHubDouble({ publicKey, appId: APP_ID, webhookSecret: WEBHOOK_SECRET, ...(o.tokenTtlMs ? { tokenTtlMs: o.tokenTtlMs } : {}), ...(o.jobMs ? { jobMs: o.jobMs } : {}) });
  await double.start();
  double.addRepo('acme/app', { private: false });
  double.addRepo('acme/secret', { private: true });
  double.addRepo('evil/fork');
  double.addRepo('other/thing');
  const lines: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _e, cb) {
      lines.push(chunk.toString());
      cb();
    },
  });
  const logger = pino({ level: 'debug' }, sink);
  const store = o.store ?? (await makeTestStore(o.kind ?? 'pglite'));
  const admin = makeSecret('admin');
  const server = await makeServer({
    store,
    logger,
    adminToken: admin,
    options: { pollMs: 100, heartbeatMs: 1000 },
    leaderIntervalMs: 100,
    ...(o.dashboardDir ? { dashboardDir: o.dashboardDir } : {}),
    github: {
      config: testGitHubConfig(double.url, o.config),
      pollMs: 100,
      ...(o.refreshAheadMs !== undefined
        ? { api: makeGitHubClient({ apiUrl: double.url, appId: APP_ID, privateKey: appKeys().privatePem, log: logger, refreshAheadMs: o.refreshAheadMs }) }
        : {}),
    },
  });
  const url = await server.listen({ host: '127.0.0.1', port: 0 });
  double.webhookUrl = `${url}${WEBHOOK_PATH}`;
  let agent: Agent | undefined;
  const agents: Agent[] = [];
  const startAgent = async (name: string, token: string, driver: VmDriver | undefined, images: ImageResolver | undefined, caches?: CacheStore): Promise<Agent> => {
    const a = makeAgent({
      servers: [url],
      token,
      name,
      driver: driver ?? makeMemoryDriver({ cpus: 512, memoryBytes: 4096 * 1024 ** 3, programs: { [STAND_IN_NAME]: standInRunner } }),
      images: images ?? memoryImageResolver,
      ...(caches ? { caches } : {}),
      logger,
      minBackoffMs: 50,
      maxBackoffMs: 500,
    });
    // Generous: on a loaded shared machine the first connection can take more than the default 10 s.
    const c = a.connected(60_000);
    await a.start();
    await c;
    return a;
  };
  if (o.agent !== false) {
    const { secret } = await createToken(store.db, { name: 'agents', role: 'agent' });
    agent = await startAgent('host-1', secret, o.driver, o.images, o.caches);
    for (const [i, x] of (o.extraAgents ?? []).entries()) {
      const t = await createToken(store.db, { name: `agents-${i + 2}`, role: 'agent' });
      agents.push(await startAgent(`host-${i + 2}`, t.secret, x.driver, x.images));
    }
  }
  return {
    double,
    server,
    store,
    client: makeApiClient({ server: url, token: admin }),
    url,
    agent,
    agents,
    logs: () => lines.join(''),
    async close() {
      for (const a of agents) await a.stop();
      await agent?.stop();
      await server.close();
      await double.close();
      await store.close();
    },
  };
}

/** Polls `cond` until it holds (bounded); the failure names what was awaited. */
export async function until(what: string, cond: () => boolean | Promise<boolean>, timeoutMs = 15_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    if (await cond()) return;
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting until ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** kiln's runner VMs (jobs of the github tenant) and their states. */
export async function runnerVms(h: GitHubHarness): Promise<{ id: number; state: JobState }[]> {
  const rows = await h.store.db.selectFrom('jobs').select(['id', 'state']).where('tenant', '=', 'github').execute();
  return rows.map((r) => ({ id: r.id, state: r.state as JobState }));
}

/** A runner VM's stored output (stdout and stderr as the job log holds them). */
export async function vmLogText(h: GitHubHarness, jobId: number): Promise<string> {
  const logs = await h.store.db.selectFrom('job_logs').select('data').where('job_id', '=', jobId).orderBy('seq').execute();
  return Buffer.concat(logs.map((l) => Buffer.from(l.data))).toString();
}

/**
 * The invariants every scenario ends with: at most one VM per GitHub job attempt from provisioning; no kiln
 * runner registration without a live VM and no live VM without a registration; no secret in the logs.
 */
export async function assertInvariants(h: GitHubHarness, o: { allowReprovision?: boolean } = {}): Promise<string[]> {
  const problems: string[] = [];
  const runners = await h.store.db.selectFrom('github_runners').selectAll().execute();
  const perJob = new Map<string, number>();
  for (const r of runners) if (r.for_job_id !== null && r.kiln_job_id !== null) perJob.set(`${r.for_job_id}/${r.for_run_attempt}`, (perJob.get(`${r.for_job_id}/${r.for_run_attempt}`) ?? 0) + 1);
  if (!o.allowReprovision) for (const [k, n] of perJob) if (n > 1) problems.push(`GitHub job ${k} got ${n} VMs`);
  const vms = await runnerVms(h);
  const live = new Set(vms.filter((v) => !isTerminal(v.state)).map((v) => v.id));
  const byName = new Map(runners.map((r) => [r.name, r]));
  for (const gr of h.double.runners.values()) {
    if (!gr.name.startsWith('kiln-')) continue;
    const row = byName.get(gr.name);
    if (!row || row.kiln_job_id === null || !live.has(row.kiln_job_id)) problems.push(`runner ${gr.name} is registered on GitHub without a VM`);
  }
  const registered = new Set([...h.double.runners.values()].map((r) => r.name));
  for (const r of runners) if (r.kiln_job_id !== null && live.has(r.kiln_job_id) && !registered.has(r.name)) problems.push(`VM of ${r.name} (job ${r.kiln_job_id}) runs without a registration`);
  const logs = h.logs();
  const secrets = [WEBHOOK_SECRET, appKeys().privatePem.split('\n')[1] ?? '', ...h.double.tokens.keys(), ...[...h.double.runners.values()].map((r) => r.secret)];
  secrets.push(...h.double.issuedJitConfigs);
  for (const s of secrets) if (s && logs.includes(s)) problems.push(`a secret appears in the logs: ${s.slice(0, 6)}…`);
  return problems;
}
