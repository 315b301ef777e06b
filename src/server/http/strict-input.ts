/**
 * Strict request validation (docs/security.md, "Strict input"). Every route's schema is compiled by one of
 * two Ajv instances: bodies with no type coercion at all (`"cpus": "2"` or `"command": "true"` is a 400, not
 * a 2 or `["true"]`), query strings and path parameters with coercion (they arrive as text). Before Ajv sees
 * anything, every string and object key is checked for NUL and lone UTF-16 surrogates (neither can be
 * stored: PostgreSQL refuses both), and every integer schema without bounds is bounded to the integers a
 * JavaScript number holds exactly, so ids and numbers ≥ 2^53 are a 400 instead of a database error.
 */
import { Ajv, type ValidateFunction } from 'ajv';
import type { FastifySchemaCompiler } from 'fastify';
import { KilnError } from '../../core/errors.ts';

/** The first place in `value` holding a string (or key) that cannot be stored, as a JSON-ish path. */
export function findUnstorableString(value: unknown): string | undefined {
  // Every request body is walked: the walk builds no path strings unless something is found.
  return hasUnstorableString(value) ? unstorablePath(value, '') : undefined;
}

function hasUnstorableString(value: unknown): boolean {
  if (typeof value === 'string') return badString(value);
  if (Array.isArray(value)) {
    for (const v of value) if (hasUnstorableString(v)) return true;
    return false;
  }
  if (value !== null && typeof value === 'object') {
    for (const k in value) {
      if (!Object.prototype.hasOwnProperty.call(value, k)) continue;
      if (badString(k) || hasUnstorableString((value as Record<string, unknown>)[k])) return true;
    }
  }
  return false;
}

function unstorablePath(value: unknown, path: string): string | undefined {
  if (typeof value === 'string') return badString(value) ? path || '(value)' : undefined;
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      const p = unstorablePath(value[i], `${path}[${i}]`);
      if (p !== undefined) return p;
    }
    return undefined;
  }
  if (value !== null && typeof value === 'object') {
    for (const [k, v] of Object.entries(value as Record<string, unknown>)) {
      const here = path ? `${path}.${k}` : k;
      if (badString(k)) return `${path ? `${path}.` : ''}(a key)`;
      const p = unstorablePath(v, here);
      if (p !== undefined) return p;
    }
  }
  return undefined;
}

/** NUL, or a UTF-16 surrogate without its pair. */
export function badString(s: string): boolean {
  // Fast path: nothing at or above U+D800 and no NUL.
  if (!/[\u0000\ud800-\udfff]/.test(s)) return false;
  return /\u0000|[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/.test(s);
}

const SAFE = Number.MAX_SAFE_INTEGER;

/** A copy of `schema` where every integer without a maximum (minimum) gets ±2^53-1. */
export function boundIntegers<T>(schema: T): T {
  if (Array.isArray(schema)) return schema.map((s: unknown) => boundIntegers(s)) as T;
  if (schema === null || typeof schema !== 'object') return schema;
  const out: Record<string | symbol, unknown> = {};
  for (const k of Reflect.ownKeys(schema)) out[k] = boundIntegers((schema as Record<string | symbol, unknown>)[k]);
  if (out.type === 'integer' || out.type === 'number') {
    if (out.maximum === undefined && out.exclusiveMaximum === undefined) out.maximum = SAFE;
    if (out.minimum === undefined && out.exclusiveMinimum === undefined) out.minimum = -SAFE;
  }
  return out as T;
}

/** Fastify's validator compiler for kiln's routes (see the file comment). */
export function makeStrictValidatorCompiler(): FastifySchemaCompiler<unknown> {
  const base = { allErrors: false, removeAdditional: false, useDefaults: true, strict: false } as const;
  const strictAjv = new Ajv({ ...base, coerceTypes: false });
  const textAjv = new Ajv({ ...base, coerceTypes: true });
  return ({ schema, httpPart }) => {
    const ajv = httpPart === 'body' ? strictAjv : textAjv;
    const check: ValidateFunction = ajv.compile(boundIntegers(schema as object));
    const validate = (data: unknown) => {
      const where = findUnstorableString(data);
      if (where !== undefined) {
        const e = new KilnError('request.bad_string', `${httpPart ?? 'request'} ${where} holds a NUL character or an unpaired UTF-16 surrogate`, {
          hint: 'send text without NUL bytes and with valid Unicode',
        });
        return { error: Object.assign(e, { statusCode: 400 }) };
      }
      if (check(data)) return { value: data };
      const err = check.errors?.[0];
      const at = err?.instancePath ? err.instancePath.replace(/^\//, '').replace(/\//g, '.') : '';
      const e = new KilnError('request.invalid', `${httpPart ?? 'request'}${at ? ` ${at}` : ''} ${err?.message ?? 'is invalid'}${err?.params && 'additionalProperty' in err.params ? ` (${String(err.params.additionalProperty)})` : ''}`, {
        hint: 'see /openapi.json for the request schema',
      });
      return { error: Object.assign(e, { statusCode: 400 }) };
    };
    return validate;
  };
}
