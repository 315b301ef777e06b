/**
 * One error type for everything kiln reports. `code` is stable (callers, HTTP and the agent protocol
 * branch on it); `message` says what happened; `hint` says what the user can do about it. A code's kind,
 * HTTP status and retryability come from the catalogue (error-catalogue.ts).
 */
import { kindOf, type ErrorKind } from './error-catalogue.ts';

export type { ErrorKind };

export interface KilnErrorOptions {
  hint?: string;
  cause?: unknown;
  kind?: ErrorKind;
  details?: Record<string, unknown>;
}

export class KilnError extends Error {
  readonly code: string;
  readonly hint: string | undefined;
  readonly kind: ErrorKind;
  readonly details: Record<string, unknown> | undefined;

  constructor(code: string, message: string, options: KilnErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'KilnError';
    this.code = code;
    this.hint = options.hint;
    this.kind = options.kind ?? kindOf(code);
    this.details = options.details;
  }
}

export function isKilnError(e: unknown, code?: string): e is KilnError {
  return e instanceof KilnError && (code === undefined || e.code === code);
}

/** Wraps anything thrown into a KilnError, keeping KilnErrors as they are. */
export function toKilnError(e: unknown, code = 'internal.unexpected'): KilnError {
  if (e instanceof KilnError) return e;
  const message = e instanceof Error ? e.message : String(e);
  return new KilnError(code, message, { cause: e, kind: 'internal' });
}
