/** The `{ error: { code, message, hint } }` body of an error, with its status from the error catalogue. */
import { httpStatusOf } from '../../core/error-catalogue.ts';
import { toKilnError, type KilnError } from '../../core/errors.ts';

export function statusFor(err: KilnError): number {
  return httpStatusOf(err);
}

export function errorBody(e: unknown): { status: number; body: { error: { code: string; message: string; hint?: string } } } {
  const err = toKilnError(e);
  const status = statusFor(err);
  const message = status >= 500 && err.kind === 'internal' ? 'internal error; the server log has details' : err.message;
  return { status, body: { error: { code: err.code, message, ...(err.hint ? { hint: err.hint } : {}) } } };
}
