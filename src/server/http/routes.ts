/**
 * A route table: every HTTP route is declared once with its permission and schemas; the same table
 * registers the routes with Fastify (which validates against the schemas) and produces /openapi.json.
 * Routes of the REST API take their method, path and schemas from the HTTP contract (core/http-contract.ts),
 * which the CLI's client shares; `defineRoute` types a handler's request and answer from it.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Static, TSchema } from '@sinclair/typebox';
import type { Token } from '../../core/host.ts';
import { ErrorAnswer, type RouteAnswer, type RouteContract } from '../../core/http-contract.ts';
import type { Permission } from './auth.ts';
import type { ServerContext } from '../context.ts';

export interface RouteDef {
  method: 'GET' | 'POST' | 'PUT' | 'DELETE';
  url: string;
  summary: string;
  tag: string;
  permission: Permission | 'public';
  schema: { body?: TSchema; querystring?: TSchema; params?: TSchema; response?: TSchema };
  /** Content type of a successful answer when it is not JSON. */
  produces?: string;
  handler(req: FastifyRequest, reply: FastifyReply, token: Token | undefined): Promise<unknown>;
}

/** A request as the contract's schemas describe it once Fastify has validated it. */
export type ContractRequest<R extends RouteContract> = Omit<FastifyRequest, 'params' | 'query' | 'body'> & {
  params: R['schema'] extends { params: infer P extends TSchema } ? Static<P> : unknown;
  query: R['schema'] extends { querystring: infer Q extends TSchema } ? Static<Q> : unknown;
  body: R['schema'] extends { body: infer B extends TSchema } ? Static<B> : unknown;
};

/** A route of the contract with its handler; the handler answers the contract's answer type (or sends its own reply). */
export function defineRoute<R extends RouteContract>(
  contract: R,
  meta: Pick<RouteDef, 'summary' | 'tag' | 'permission' | 'produces'>,
  handler: (req: ContractRequest<R>, reply: FastifyReply, token: Token | undefined) => Promise<RouteAnswer<R> | FastifyReply | undefined>,
): RouteDef {
  return {
    method: contract.method,
    url: contract.url,
    schema: contract.schema,
    ...meta,
    // Fastify validated params, query and body against these very schemas before the handler runs.
    handler: (req, reply, token) => handler(req as unknown as ContractRequest<R>, reply, token),
  };
}

export function registerRoutes(app: FastifyInstance, ctx: ServerContext, routes: RouteDef[]): void {
  for (const r of routes) {
    app.route({
      method: r.method,
      url: r.url,
      schema: {
        ...(r.schema.body ? { body: r.schema.body } : {}),
        ...(r.schema.querystring ? { querystring: r.schema.querystring } : {}),
        ...(r.schema.params ? { params: r.schema.params } : {}),
      },
      handler: async (req, reply) => {
        const token = r.permission === 'public' ? undefined : await ctx.auth.authenticate(req.headers.authorization, r.permission);
        return r.handler(req, reply, token);
      },
    });
  }
}

const ErrorSchema = ErrorAnswer;

/** OpenAPI 3.1 description of the route table. */
/** OpenAPI path items for endpoints outside the route table (the GitHub webhook, with its raw body). */
export type ExtraPaths = Record<string, Record<string, unknown>>;

export function openApiDocument(routes: RouteDef[], version: string, extra: ExtraPaths = {}): unknown {
  const paths: Record<string, Record<string, unknown>> = { ...extra };
  for (const r of routes) {
    const path = r.url.replace(/:(\w+)/g, '{$1}');
    const params: unknown[] = [];
    const collect = (schema: TSchema | undefined, where: 'path' | 'query') => {
      const props = (schema as { properties?: Record<string, unknown> } | undefined)?.properties ?? {};
      const required = new Set((schema as { required?: string[] } | undefined)?.required ?? []);
      for (const [name, s] of Object.entries(props)) params.push({ name, in: where, required: where === 'path' || required.has(name), schema: s });
    };
    collect(r.schema.params, 'path');
    collect(r.schema.querystring, 'query');
    const op: Record<string, unknown> = {
      summary: r.summary,
      tags: [r.tag],
      ...(r.permission === 'public' ? { security: [] } : { description: `Needs a token allowed to ${r.permission}.` }),
      ...(params.length ? { parameters: params } : {}),
      ...(r.schema.body ? { requestBody: { required: true, content: { 'application/json': { schema: r.schema.body } } } } : {}),
      responses: {
        '200': {
          description: 'OK',
          content: { [r.produces ?? 'application/json']: { schema: r.schema.response ?? {} } },
        },
        default: { description: 'Error', content: { 'application/json': { schema: ErrorSchema } } },
      },
    };
    (paths[path] ??= {})[r.method.toLowerCase()] = op;
  }
  return {
    openapi: '3.1.0',
    info: { title: 'kiln control plane', version, description: 'Jobs, hosts and tokens. Agents connect at /v1/agent/connect (WebSocket).' },
    components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
    security: [{ bearer: [] }],
    paths,
  };
}
