/**
 * The dashboard: its static files at `/` (built by scripts/build-dashboard.mjs from src/dashboard into
 * dist/dashboard; the CLI passes the directory) and the live feed at /v1/live (server-sent events, read
 * with fetch so the token travels in the Authorization header, never in a URL). Data comes from the
 * ordinary read API: the browser holds a kiln token and nothing else.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import { API } from '../../core/http-contract.ts';
import { defineRoute, type RouteDef } from '../http/routes.ts';
import type { LiveHub } from './live.ts';
import { tenantScope } from '../http/auth.ts';

export const DASHBOARD_FILES = { 'index.html': 'text/html; charset=utf-8', 'app.js': 'text/javascript; charset=utf-8', 'app.css': 'text/css; charset=utf-8' } as const;

const SECURITY_HEADERS = {
  'content-security-policy': "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
};

const NOT_BUILT = `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>kiln</title></head><body>
<h1>kiln</h1><p>The dashboard was not built into this installation. Run <code>npm run build</code> in kiln's directory
(it bundles src/dashboard into dist/dashboard), then restart the server. The API answers at <a href="/openapi.json">/openapi.json</a>.</p></body></html>`;

/** Serves the built files from `dir` (read once at start); a page that says how to build them when absent. */
export function registerDashboardAssets(app: FastifyInstance, dir: string | undefined): void {
  const files = new Map<string, { type: string; body: Buffer }>();
  if (dir && Object.keys(DASHBOARD_FILES).every((f) => existsSync(join(dir, f)))) {
    for (const [name, type] of Object.entries(DASHBOARD_FILES)) files.set(name, { type, body: readFileSync(join(dir, name)) });
  }
  const serve = (name: keyof typeof DASHBOARD_FILES) => async (_req: unknown, reply: import('fastify').FastifyReply) => {
    const f = files.get(name);
    void reply.headers({ ...SECURITY_HEADERS, 'cache-control': name === 'index.html' ? 'no-store' : 'no-cache' });
    if (!f) return name === 'index.html' ? reply.type('text/html; charset=utf-8').send(NOT_BUILT) : reply.code(404).send({ error: { code: 'dashboard.not_built', message: 'the dashboard was not built' } });
    return reply.type(f.type).send(f.body);
  };
  app.get('/', serve('index.html'));
  app.get('/dashboard/app.js', serve('app.js'));
  app.get('/dashboard/app.css', serve('app.css'));
}

export function dashboardRoutes(hub: LiveHub): RouteDef[] {
  return [
    defineRoute(API.whoami, { tag: 'dashboard', summary: 'The token making the request: name, role, tenant (the dashboard signs in with it)', permission: 'read' }, async (_req, _reply, token) => ({
      name: token!.name,
      role: token!.role,
      tenant: token!.tenant,
    })),
    defineRoute(
      API.live,
      {
        tag: 'dashboard',
        summary: "Server-sent events: one `delta` every 500 ms while anything changed (job states, submissions, logs, hosts, GitHub), each confined to the token's tenant (an admin's sees all)",
        permission: 'read',
        produces: 'text/event-stream',
      },
      async (_req, reply, token) => {
        reply.hijack();
        reply.raw.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-store', 'x-accel-buffering': 'no', connection: 'keep-alive' });
        reply.raw.socket?.setNoDelay(true);
        hub.add(reply.raw, tenantScope(token));
        return undefined;
      },
    ),
  ];
}
