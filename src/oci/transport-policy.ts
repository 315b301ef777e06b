/**
 * Pure transport decisions for the registry client: which scheme a registry is reached with, which URLs may
 * be fetched over plain HTTP, and which failures are retried (a table of codes, never message text).
 */
import { KilnError } from '../core/errors.ts';
import { isLoopbackHost } from './reference.ts';

export interface RegistryHostConfig {
  /** Reach this host over plain HTTP (only ever needed for non-loopback hosts). */
  plainHttp?: boolean;
  /** PEM CA bundle contents to trust for this host. */
  ca?: string;
  insecureSkipVerify?: boolean;
}

export type HostConfigs = Record<string, RegistryHostConfig>;

/** Loopback registries default to plain HTTP (as Docker and crane do); others need `plainHttp: true`. */
export function schemeFor(registry: string, hosts: HostConfigs): 'http' | 'https' {
  const c = hosts[registry];
  if (c?.plainHttp !== undefined) return c.plainHttp ? 'http' : 'https';
  return isLoopbackHost(registry) ? 'http' : 'https';
}

/** Throws unless the URL is HTTPS, or HTTP to loopback or a host configured for plain HTTP. */
export function assertUrlAllowed(url: URL, hosts: HostConfigs): void {
  if (url.protocol === 'https:') return;
  if (url.protocol !== 'http:') {
    throw new KilnError('oci.plain_http_refused', `refusing to fetch ${url.href}: only http and https are supported`, { hint: 'check the registry configuration' });
  }
  if (isLoopbackHost(url.host) || hosts[url.host]?.plainHttp === true) return;
  throw new KilnError('oci.plain_http_refused', `refusing plain HTTP to ${url.host}, which is not loopback and not configured for it`, {
    hint: `if ${url.host} really serves plain HTTP on a trusted network, pass --plain-http ${url.host} (or set plain-http: true for it under registry: in the file)`,
  });
}

/** Credentials go over plain HTTP only to loopback. */
export function mayCarryCredentials(url: URL): boolean {
  return url.protocol === 'https:' || isLoopbackHost(url.host);
}

export const RETRYABLE_STATUS: ReadonlySet<number> = new Set([408, 429, 500, 502, 503, 504]);
export const RETRYABLE_NETWORK_CODES: ReadonlySet<string> = new Set([
  'ECONNRESET',
  'ECONNREFUSED',
  'EPIPE',
  'ETIMEDOUT',
  'EAI_AGAIN',
  'UND_ERR_SOCKET',
  'UND_ERR_CONNECT_TIMEOUT',
  'UND_ERR_HEADERS_TIMEOUT',
  'UND_ERR_BODY_TIMEOUT',
  'UND_ERR_CLOSED',
]);

export interface RetryPolicy {
  attempts: number;
  baseMs: number;
  maxMs: number;
}

export const DEFAULT_RETRY: RetryPolicy = { attempts: 5, baseMs: 200, maxMs: 5000 };

/** Delay before retry number `attempt` (1-based): exponential, capped, honouring Retry-After seconds. */
export function backoffMs(attempt: number, policy: RetryPolicy, retryAfter?: string | null): number {
  if (retryAfter && /^\d+$/.test(retryAfter.trim())) return Math.min(Number(retryAfter.trim()) * 1000, Math.max(policy.maxMs, 30_000));
  return Math.min(policy.baseMs * 2 ** (attempt - 1), policy.maxMs);
}

export function networkErrorCode(e: unknown): string | undefined {
  let cur: unknown = e;
  for (let i = 0; i < 4 && cur; i++) {
    const code = (cur as { code?: unknown }).code;
    if (typeof code === 'string' && RETRYABLE_NETWORK_CODES.has(code)) return code;
    cur = (cur as { cause?: unknown }).cause;
  }
  return undefined;
}

/** TLS verification failures: not retried; the fix is trusting the registry's CA. */
export const TLS_TRUST_ERROR_CODES: ReadonlySet<string> = new Set([
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'CERT_HAS_EXPIRED',
  'CERT_NOT_YET_VALID',
  'ERR_TLS_CERT_ALTNAME_INVALID',
]);

export function tlsErrorCode(e: unknown): string | undefined {
  let cur: unknown = e;
  for (let i = 0; i < 4 && cur; i++) {
    const code = (cur as { code?: unknown }).code;
    if (typeof code === 'string' && TLS_TRUST_ERROR_CODES.has(code)) return code;
    cur = (cur as { cause?: unknown }).cause;
  }
  return undefined;
}
