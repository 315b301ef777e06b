/**
 * One `kiln server` replica: HTTP API (route table, OpenAPI at /openapi.json), the agent WebSocket, the
 * scheduler, the leader's periodic work, metrics at /metrics. Built from explicit dependencies; the CLI
 * (src/cli/server.ts, src/cli/up.ts) does the wiring.
 */
import { randomBytes, timingSafeEqual } from 'node:crypto';
import { hostname } from 'node:os';
import { writePrivateFile } from './private-file.ts';
import Fastify, { type FastifyError, type FastifyInstance } from 'fastify';
import websocket from '@fastify/websocket';
import type { Logger } from 'pino';
import { KilnError } from '../core/errors.ts';
import { KILN_VERSION } from '../core/version.ts';
import type { Store } from '../store/store.ts';
import { countQueued } from '../store/jobs.ts';
import { errorForLog } from '../store/store-errors.ts';
import { countTokens, createToken } from '../store/tokens.ts';
import { attachAgentGateway, AGENT_MAX_PAYLOAD, type AgentGateway } from './agents/agent-gateway.ts';
import { makeAuthenticator } from './http/auth.ts';
import { DEFAULT_SERVER_OPTIONS, type ServerContext, type ServerOptions } from './context.ts';
import { ServerEventBus } from './events.ts';
import { HostRegistry } from './agents/host-registry.ts';
import { errorBody } from './http/http-errors.ts';
import { makeStrictValidatorCompiler } from './http/strict-input.ts';
import { DEFAULT_BODY_INTAKE, refusalHeaders, makeBodyIntake, type BodyIntakeOptions } from './http/body-intake.ts';
import { makeLeader, type Leader, type UpkeepTiming } from './leader.ts';
import { makeLogWriter } from './agents/log-writer.ts';
import { makePhaseWriter } from './agents/phase-writer.ts';
import { makeResultWriter } from './agents/result-writer.ts';
import { makeMetrics } from './metrics.ts';
import { makeJobCommands } from './jobs/job-commands.ts';
import { listHosts } from '../store/hosts.ts';
import { makeScheduler, type Scheduler } from './scheduler/scheduler.ts';
import { hostRoutes } from './http/hosts.ts';
import { jobRoutes } from './http/jobs.ts';
import { openApiDocument, registerRoutes, type RouteDef } from './http/routes.ts';
import { tokenRoutes } from './http/tokens.ts';
import { egressRoutes } from './http/egress.ts';
import { makeGitHubClient, type GitHubApi } from './github/api.ts';
import type { GitHubConfig } from './github/config.ts';
import { webhookOpenApi } from './github/manifest.ts';
import { makeGitHubService, type GitHubService } from './github/github.ts';
import { DEFAULT_POWER_OPTIONS, makePowerManager, type PowerManager, type PowerOptions } from './power/manager.ts';
import { powerRoutes } from './power/routes.ts';
import { makeFigures, type Figures } from './reports/figures.ts';
import { reportRoutes } from './reports/routes.ts';
import { dashboardRoutes, registerDashboardAssets } from './dashboard/routes.ts';
import { makeLiveHub, type LiveHub } from './dashboard/live.ts';

export interface MakeServerOptions {
  store: Store;
  logger: Logger;
  options?: Partial<ServerOptions>;
  /** An admin token secret to make sure exists (from config, e.g. KILN_ADMIN_TOKEN). */
  adminToken?: string;
  /** Where to write a generated admin token when the store has no tokens yet (mode 0600). */
  bootstrapTokenFile?: string;
  /** When set, GET /metrics needs `Authorization: Bearer <metricsToken>` (KILN_METRICS_TOKEN). */
  metricsToken?: string;
  /** HTTP body limit in bytes (the API's JSON; default 1 MiB). */
  bodyLimit?: number;
  /** kiln's own TLS (PEM certificate chain and key): the API and the agent endpoint speak https/wss only. */
  tls?: { cert: Buffer; key: Buffer };
  /** The memory budget and deadline of request bodies (http/body-intake.ts). */
  bodyIntake?: Partial<BodyIntakeOptions>;
  /** Leader sweep interval. */
  leaderIntervalMs?: number;
  /** When the leader looks after the embedded store's tables (default UPKEEP_TIMING). */
  upkeep?: UpkeepTiming;
  /** GitHub Actions (src/server/github); `api` replaces the HTTP client (tests point it at a double). */
  github?: { config: GitHubConfig; api?: GitHubApi; pollMs?: number };
  /** Host power (src/server/power, docs/power.md): the sleep policy and how hosts are woken. */
  power?: PowerOptions;
  /** The built dashboard (dist/dashboard); without it `/` says how to build it. */
  dashboardDir?: string;
}

export interface KilnServer {
  readonly app: FastifyInstance;
  readonly serverId: string;
  readonly events: ServerEventBus;
  readonly registry: HostRegistry;
  readonly scheduler: Scheduler;
  readonly leader: Leader;
  readonly ctx: ServerContext;
  readonly github: GitHubService | undefined;
  readonly power: PowerManager;
  /** The wait/boot/pickup histograms (src/server/reports/figures.ts). */
  readonly figures: Figures;
  /** The dashboard's live feed. */
  readonly live: LiveHub;
  /** Set when this start created the first admin token (its secret, to show once). */
  readonly bootstrapSecret: string | undefined;
  listen(opts: { host: string; port: number }): Promise<string>;
  close(): Promise<void>;
}

export async function makeServer(o: MakeServerOptions): Promise<KilnServer> {
  const serverId = `${hostname()}-${process.pid}-${randomBytes(3).toString('hex')}`;
  // Every error this server logs goes through errorForLog: a store error's refused values (a job's env and
  // secrets in "Failing row contains …") never reach the log.
  const log = o.logger.child({ serverId }, { serializers: { err: errorForLog } });
  const events = new ServerEventBus();
  const metrics = makeMetrics(
    async () => countQueued(o.store.db),
    async () => (await listHosts(o.store.db)).flatMap((h) => (h.mirror ? [{ host: h.name, healthy: h.mirror.healthy && (h.state === 'online' || h.state === 'draining'), cacheBytes: h.mirror.cacheBytes }] : [])),
  );
  const ctx: ServerContext = {
    serverId,
    store: o.store,
    log,
    events,
    metrics,
    auth: makeAuthenticator(o.store.db),
    options: { ...DEFAULT_SERVER_OPTIONS, ...o.options },
    bodies: makeBodyIntake({ ...DEFAULT_BODY_INTAKE, ...o.bodyIntake }),
  };

  let bootstrapSecret: string | undefined;
  if (o.adminToken) {
    const { token } = await createToken(o.store.db, { name: 'admin (from config)', role: 'admin', secret: o.adminToken });
    if (token.revokedAt) log.warn({ tokenId: token.id }, 'the configured admin token (KILN_ADMIN_TOKEN) was revoked and stays revoked; set a new one');
  }
  if (o.bootstrapTokenFile && (await countTokens(o.store.db)) === 0) {
    const { secret } = await createToken(o.store.db, { name: 'admin (first start)', role: 'admin' });
    writePrivateFile(o.bootstrapTokenFile, `${secret}\n`);
    bootstrapSecret = secret;
  }

  const bodyLimit = o.bodyLimit ?? 1024 * 1024;
  const app = Fastify({
    logger: false,
    bodyLimit,
    // Headers must arrive within this (Node's default is 60 s); bodies have their own deadline (body-intake.ts).
    requestTimeout: ctx.bodies.options.timeoutMs + 30_000,
    // kiln's own TLS; Fastify types an https server apart, but every route and plugin here is the same.
    ...(o.tls ? { https: { cert: o.tls.cert, key: o.tls.key, minVersion: 'TLSv1.2' as const } } : {}),
  }) as unknown as FastifyInstance;
  // Bodies are validated without coercion, strings checked for NUL and lone surrogates (strict-input.ts).
  app.setValidatorCompiler(makeStrictValidatorCompiler());
  await app.register(websocket, { options: { maxPayload: AGENT_MAX_PAYLOAD } });
  // The API speaks JSON only; anything else is a 415, not a string the schema then rejects.
  app.removeContentTypeParser('text/plain');
  // JSON bodies are read as they stream, capped and under the shared body budget, then parsed as Fastify
  // would (prototype poisoning refused).
  const parseJson = app.getDefaultJsonParser('error', 'error');
  app.removeContentTypeParser('application/json');
  app.addHook('onRequest', (req, reply, done) => {
    ctx.bodies.bind(req.raw, reply.raw);
    done();
  });
  app.addContentTypeParser('application/json', (req, payload, done) => {
    ctx.bodies.read(req.raw, payload, bodyLimit).then(
      (buf) => parseJson(req, buf.toString('utf8'), done),
      (e: Error) => done(e, undefined),
    );
  });

  app.setErrorHandler((e: FastifyError, req, reply) => {
    let err: unknown = e;
    if (e.validation) err = new KilnError('request.invalid', `${e.validationContext ?? 'request'} ${e.message.replace(/^(body|querystring|params)\s*/, '')}`);
    else if (e.code === 'FST_ERR_CTP_BODY_TOO_LARGE') err = new KilnError('request.too_large', `the request body exceeds ${o.bodyLimit ?? 1024 * 1024} bytes`);
    else if (e.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE') err = new KilnError('request.unsupported_media', 'send JSON (content-type: application/json)');
    else if (e.code === 'FST_ERR_CTP_EMPTY_JSON_BODY' || e.code === 'FST_ERR_CTP_INVALID_JSON_BODY' || (e.statusCode === 400 && e instanceof SyntaxError))
      err = new KilnError('request.bad_json', 'the request body is not valid JSON');
    const { status, body } = errorBody(err);
    if (status >= 500) log.error({ err: e, url: req.url }, 'request failed');
    const refusal = e instanceof KilnError ? refusalHeaders(req.raw, e.code) : undefined;
    if (refusal) void reply.headers(refusal);
    void reply.code(status).send(body);
  });
  app.setNotFoundHandler((req, reply) => {
    void reply.code(404).send({ error: { code: 'route.not_found', message: `no route ${req.method} ${req.url.split('?')[0]}` } });
  });

  const registry = new HostRegistry();
  const jobs = makeJobCommands(ctx);
  const scheduler = makeScheduler(ctx, registry, jobs);
  const leader = makeLeader(ctx, jobs, { intervalMs: o.leaderIntervalMs ?? 1000, url: null, ...(o.upkeep ? { upkeep: o.upkeep } : {}) });
  const logs = makeLogWriter(ctx);
  const phases = makePhaseWriter(ctx, jobs);
  const results = makeResultWriter(jobs, async () => {
    await phases.flush();
    await logs.flush();
  });
  const power = makePowerManager(ctx, { registry, isLeader: () => leader.isLeader(), kick: () => scheduler.kick(), options: o.power ?? DEFAULT_POWER_OPTIONS });
  // GitHub is made after the gateway; a runner VM's cache.ask reaches it once it exists.
  let github: GitHubService | undefined;
  const cacheTrust = (jobId: number) => (github ? github.cacheTrust(jobId) : Promise.resolve({ write: false, reason: 'GitHub is not configured on this server' }));
  const gateway: AgentGateway = attachAgentGateway(app, { ctx, registry, logs, phases, results, jobs, scheduler, power, cacheTrust });
  const apiDeps = { ctx, registry, jobs, scheduler, closeToken: gateway.closeToken };
  const routes: RouteDef[] = [...jobRoutes(apiDeps), ...hostRoutes(apiDeps), ...tokenRoutes(apiDeps), ...egressRoutes(apiDeps), ...powerRoutes({ ctx, power, policy: (o.power ?? DEFAULT_POWER_OPTIONS).policy })];
  const figures = makeFigures(ctx);
  const live = makeLiveHub({ events, ...(o.github ? { githubTenant: o.github.config.tenant } : {}), onGitHub: (fn) => (github ? combine([github.events.on('job.refused', fn), github.events.on('runner.state', fn)]) : () => {}) });
  routes.push(...reportRoutes(apiDeps), ...dashboardRoutes(live));
  const gh = o.github;
  github = gh
    ? makeGitHubService({
        ctx,
        config: gh.config,
        api: gh.api ?? makeGitHubClient({ apiUrl: gh.config.apiUrl, appId: gh.config.appId, clientId: gh.config.clientId, privateKey: gh.config.privateKey.reveal(), log }),
        leader,
        jobs,
        ...(gh.pollMs !== undefined ? { pollMs: gh.pollMs } : {}),
      })
    : undefined;
  if (github) {
    github.events.on('job.started', (e) => figures.githubStarted(e));
    await github.register(app);
    routes.push(...github.routes);
  }
  registerRoutes(app, ctx, routes);
  const openapi = openApiDocument(routes, KILN_VERSION, github ? webhookOpenApi() : {});
  app.get('/openapi.json', async () => openapi);
  app.get('/healthz', async () => ({ ok: true, serverId, leader: leader.isLeader() }));
  registerDashboardAssets(app, o.dashboardDir);
  app.get('/metrics', async (req, reply) => {
    // Optionally behind a token of its own (KILN_METRICS_TOKEN), compared in constant time.
    if (o.metricsToken !== undefined) {
      const given = Buffer.from(/^Bearer\s+(\S+)$/i.exec(req.headers.authorization ?? '')?.[1] ?? '');
      const want = Buffer.from(o.metricsToken);
      if (given.length !== want.length || !timingSafeEqual(given, want)) {
        return reply.code(401).send({ error: { code: 'auth.invalid', message: 'GET /metrics needs the metrics token', hint: 'send Authorization: Bearer <KILN_METRICS_TOKEN>' } });
      }
    }
    return reply.type(metrics.registry.contentType).send(await metrics.registry.metrics());
  });

  let url: string | undefined;
  let closing: Promise<void> | undefined;

  return {
    app,
    serverId,
    events,
    registry,
    scheduler,
    leader,
    ctx,
    github,
    power,
    figures,
    live,
    bootstrapSecret,
    async listen({ host, port }) {
      const addr = await app.listen({ host, port });
      url = addr.replace('[::1]', '127.0.0.1');
      scheduler.start();
      leader.start();
      power.start();
      github?.start();
      log.info({ url }, 'kiln server listening');
      return url;
    },
    close() {
      closing ??= (async () => {
        live.close();
        figures.close();
        await github?.stop();
        await scheduler.stop();
        await power.stop();
        await leader.stop();
        await gateway.close();
        await phases.flush();
        await logs.close();
        await app.close();
      })();
      return closing;
    },
  };
}

const combine = (offs: (() => void)[]) => () => offs.forEach((off) => off());
