/** The one table from error codes to HTTP statuses, and the `{ error: { code, message } }` body. */
import { toKilnError, type KilnError } from '../../core/errors.ts';

const EXACT: Record<string, number> = {
  'auth.missing': 401,
  'auth.invalid': 401,
  'auth.forbidden': 403,
  'request.too_large': 413,
  'request.unsupported_media': 415,
  'job.not_found': 404,
  'host.not_found': 404,
  'token.not_found': 404,
  'route.not_found': 404,
  'job.not_cancellable': 409,
  'host.busy': 409,
  'host.bad_transition': 409,
  'server.shutting_down': 503,
  'store.unavailable': 503,
};

/** By code prefix when no exact entry exists. */
const PREFIX: [string, number][] = [
  ['request.', 400],
  ['input.', 400],
  ['label.', 400],
  ['job.bad_', 400],
  ['config.', 400],
];

export function statusFor(err: KilnError): number {
  const exact = EXACT[err.code];
  if (exact) return exact;
  for (const [p, s] of PREFIX) if (err.code.startsWith(p)) return s;
  if (err.kind === 'unavailable') return 503;
  return err.kind === 'user' ? 400 : 500;
}

export function errorBody(e: unknown): { status: number; body: { error: { code: string; message: string; hint?: string } } } {
  const err = toKilnError(e);
  const status = statusFor(err);
  const message = status >= 500 && err.kind === 'internal' ? 'internal error; the server log has details' : err.message;
  return { status, body: { error: { code: err.code, message, ...(err.hint ? { hint: err.hint } : {}) } } };
}
