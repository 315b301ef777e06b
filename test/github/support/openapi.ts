/**
 * GitHub's published description (@octokit/openapi, OpenAPI 3.0.3) as JSON Schema validators: `nullable`
 * is converted to a union with null, and every fragment (request body, response, webhook payload) is
 * validated by JSON pointer into the one document. Loaded once per test process.
 */
import { createRequire } from 'node:module';
import { Ajv, type ValidateFunction } from 'ajv';

const require = createRequire(import.meta.url);

function convertNullable(node: unknown): unknown {
  if (Array.isArray(node)) return node.map(convertNullable);
  if (node === null || typeof node !== 'object') return node;
  const o: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(node)) if (k !== 'nullable') o[k] = convertNullable(v);
  if ((node as { nullable?: unknown }).nullable !== true) return o;
  if (typeof o.type === 'string') {
    o.type = [o.type, 'null'];
    if (Array.isArray(o.enum) && !o.enum.includes(null)) o.enum = [...(o.enum as unknown[]), null];
    return o;
  }
  return { anyOf: [o, { type: 'null' }] };
}

let ajv: Ajv | undefined;
const cache = new Map<string, ValidateFunction>();

const esc = (s: string) => s.replace(/~/g, '~0').replace(/\//g, '~1');

function load(): Ajv {
  if (ajv) return ajv;
  const doc = convertNullable(require('@octokit/openapi/generated/api.github.com.json')) as Record<string, unknown>;
  ajv = new Ajv({ strict: false, validateFormats: false, allErrors: false });
  ajv.addSchema(doc, 'gh');
  return ajv;
}

export function validatorAt(pointer: string): ValidateFunction {
  let v = cache.get(pointer);
  if (!v) {
    const a = load();
    const found = a.getSchema(`gh#${pointer}`);
    if (!found) throw new Error(`no schema at ${pointer}`);
    v = found;
    cache.set(pointer, v);
  }
  return v;
}

/** Validates `value`; returns undefined or a one-line description of the first problem. */
export function check(pointer: string, value: unknown): string | undefined {
  const v = validatorAt(pointer);
  if (v(value)) return undefined;
  const e = v.errors?.[0];
  return `${pointer}: ${e?.instancePath || '(root)'} ${e?.message ?? 'invalid'} ${e?.params ? JSON.stringify(e.params) : ''}`;
}

export const requestPointer = (path: string, method: string) => `/paths/${esc(path)}/${method}/requestBody/content/application~1json/schema`;

/** The response schema pointer for an operation and status (following a components/responses $ref). */
export function responsePointer(path: string, method: string, status: number): string | undefined {
  const doc = load().getSchema('gh')?.schema as { paths: Record<string, Record<string, { responses: Record<string, { $ref?: string; content?: Record<string, unknown> }> }>>; components: { responses: Record<string, { content?: Record<string, unknown> }> } };
  const r = doc.paths[path]?.[method]?.responses[String(status)];
  if (!r) return undefined;
  if (r.$ref) {
    const name = r.$ref.split('/').pop() ?? '';
    return doc.components.responses[name]?.content ? `/components/responses/${esc(name)}/content/application~1json/schema` : undefined;
  }
  return r.content ? `/paths/${esc(path)}/${method}/responses/${status}/content/application~1json/schema` : undefined;
}

export function hasOperation(path: string, method: string): boolean {
  const doc = load().getSchema('gh')?.schema as { paths: Record<string, Record<string, unknown>> };
  return Boolean(doc.paths[path]?.[method]);
}

export const webhookPointer = (action: string) => `/x-webhooks/workflow-job-${action.replace('_', '-')}/post/requestBody/content/application~1json/schema`;
