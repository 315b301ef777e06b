/**
 * The error catalogue: for each error code, its kind (whose fault), the HTTP status the API answers with,
 * and whether a later attempt may succeed. The one place these are decided: KilnError takes its default kind
 * from here, the HTTP edge (server/http/http-errors.ts) its status, and every retry decision (GitHub
 * provisioning, registry pushes) reads `isRetryable`, never the message text (graphile-worker's retryable
 * SQLSTATE table is the model). Pure.
 *
 * A code not listed gets the entry of its longest listed prefix (`request.`), else one from its kind.
 */

/** Whose fault: the user's input or setup, kiln's own, or a dependency that is down for now. */
export type ErrorKind = 'user' | 'internal' | 'unavailable';

export interface ErrorEntry {
  kind: ErrorKind;
  /** HTTP status of the API's `{ error }` answer. */
  status: number;
  /** Whether the same work may succeed if tried again later, unchanged. */
  retryable: boolean;
}

const user = (status = 400): ErrorEntry => ({ kind: 'user', status, retryable: false });
const unavailable = (status = 503): ErrorEntry => ({ kind: 'unavailable', status, retryable: true });
const internal: ErrorEntry = { kind: 'internal', status: 500, retryable: false };

/** Codes with an entry of their own. */
const CODES: Readonly<Record<string, ErrorEntry>> = {
  'auth.missing': user(401),
  'auth.invalid': user(401),
  'auth.forbidden': user(403),
  'request.too_large': user(413),
  'request.unsupported_media': user(415),
  'request.timeout': user(408),
  'request.busy': unavailable(),
  'route.not_found': user(404),
  'job.not_found': user(404),
  'host.not_found': user(404),
  'token.not_found': user(404),
  'job.not_cancellable': user(409),
  'job.idempotency_key_reused': user(422),
  'job.idempotency_key_busy': unavailable(409),
  'host.busy': user(409),
  'host.bad_transition': user(409),
  'job.bad_transition': internal,
  'server.shutting_down': unavailable(),
  'store.unavailable': unavailable(),
  'client.unreachable': unavailable(),
  'client.log_stream_ended': unavailable(),
  // GitHub's API: down, rate limited, or refusing credentials that may be rotated meanwhile.
  'github.unavailable': unavailable(),
  'github.rate_limited': unavailable(),
  'github.throttled': unavailable(),
  'github.auth_failed': unavailable(),
  // A runner VM that did not come online in time may well boot on another try.
  'vm.boot_timeout': unavailable(),
};

/** Families of codes, by prefix, for codes without an entry of their own. */
const PREFIXES: readonly [string, ErrorEntry][] = [
  ['request.', user()],
  ['input.', user()],
  ['label.', user()],
  ['job.bad_', user()],
  ['config.', user()],
];

const BY_KIND: Readonly<Record<ErrorKind, ErrorEntry>> = { user: user(), internal, unavailable: unavailable() };

/** The catalogue's entry for `code`, or undefined when neither the code nor a prefix of it is listed. */
export function catalogued(code: string): ErrorEntry | undefined {
  const exact = CODES[code];
  if (exact) return exact;
  for (const [p, e] of PREFIXES) if (code.startsWith(p)) return e;
  return undefined;
}

/** The kind a KilnError of `code` has when its thrower does not say (user, for codes the catalogue lacks). */
export function kindOf(code: string): ErrorKind {
  return catalogued(code)?.kind ?? 'user';
}

/** The HTTP status for an error: its code's entry, else its kind's. */
export function httpStatusOf(err: { code: string; kind: ErrorKind }): number {
  return (catalogued(err.code) ?? BY_KIND[err.kind]).status;
}

/** Whether an error is worth retrying later: its code's entry, else its kind (a dependency that is down). */
export function isRetryable(err: { code: string; kind: ErrorKind }): boolean {
  return (catalogued(err.code) ?? BY_KIND[err.kind]).retryable;
}
