/**
 * Request bodies, read as they stream, for the API's JSON and the GitHub webhook alike:
 * - a byte cap per route: a declared Content-Length above it is a 413 before any byte is read, and a
 *   chunked body is cut off (413) as soon as it passes the cap;
 * - a memory budget across every body being received at once: bodies over `LARGE_BODY` bytes (declared,
 *   or grown past it while streaming) share `largeBudget` bytes, smaller ones share `smallBudget`; a body
 *   that does not fit is refused at once with 503 `request.busy` (Retry-After: 1), so a hundred slow large
 *   uploads hold at most the budget, never a hundred bodies. A body's bytes stay counted until its answer
 *   is sent (the buffer lives that long);
 * - a deadline: the whole body must arrive within `timeoutMs`, else 408 `request.timeout` (a slow-loris
 *   body holds its budget for that long at most).
 * Every refusal answers with `Connection: close`, so the rest of a refused body is never stored, and closes
 * lingering (`refusalHeaders`): the client that is still sending reads the answer instead of a reset.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Readable } from 'node:stream';
import { KilnError } from '../../core/errors.ts';

/** Bodies up to this size count against the small budget; larger ones against the large budget. */
export const LARGE_BODY = 64 * 1024;

export interface BodyIntakeOptions {
  /** Bytes of large bodies (over LARGE_BODY) received at once, across all requests. */
  largeBudget: number;
  /** Bytes of small bodies received at once. */
  smallBudget: number;
  /** Longest a body may take to arrive. */
  timeoutMs: number;
}

export const DEFAULT_BODY_INTAKE: BodyIntakeOptions = { largeBudget: 64 * 1024 * 1024, smallBudget: 32 * 1024 * 1024, timeoutMs: 30_000 };

/** Error codes that end the connection (the rest of the body is not stored). */
export const BODY_REFUSALS: ReadonlySet<string> = new Set(['request.too_large', 'request.busy', 'request.timeout']);

/** How long, and how many more body bytes, a refused request's connection is kept open so its answer is read. */
export const LINGER_MS = 2000;
export const LINGER_BYTES = 4 * 1024 * 1024;

/**
 * The headers of a refusal (413, 503, 408), or undefined for any other error; also makes the connection close
 * lingering. Node ends a `Connection: close` answer by destroying the socket as soon as the answer is written;
 * if body bytes the server did not read are still arriving, the kernel answers them with a reset, and a reset
 * can destroy the answer in the client's buffers before it is read: a client still uploading an oversize body
 * then sees EPIPE or ECONNRESET instead of the 413. So the socket is only half-closed after the answer, the
 * rest of the body is read and dropped, and the connection ends when the client closes, after LINGER_MS, or
 * after LINGER_BYTES more bytes, whichever comes first (the same as a web server's lingering close).
 */
export function refusalHeaders(req: IncomingMessage, code: string): Record<string, string> | undefined {
  if (!BODY_REFUSALS.has(code)) return undefined;
  const socket = req.socket as (Socket & { kilnLinger?: true }) | null;
  if (socket && !socket.kilnLinger && !socket.destroyed) {
    socket.kilnLinger = true;
    const stop = () => socket.destroy();
    const timer = setTimeout(stop, LINGER_MS);
    timer.unref();
    socket.once('close', () => clearTimeout(timer));
    socket.destroySoon = function (this: Socket) {
      this.end();
    };
    let dropped = 0;
    req.on('data', (c: Buffer) => {
      dropped += c.length;
      if (dropped > LINGER_BYTES) stop();
    });
    req.resume();
  }
  return code === 'request.busy' ? { connection: 'close', 'retry-after': '1' } : { connection: 'close' };
}

export interface BodyIntake {
  /** Ties a request to its response (an onRequest hook): a body's budget is held until the answer is sent. */
  bind(req: IncomingMessage, res: ServerResponse): void;
  /** Reads `stream` (the request body) into one buffer of at most `maxBytes`, under the shared budget. */
  read(req: IncomingMessage, stream: Readable, maxBytes: number): Promise<Buffer>;
  /** Bytes held now: [small, large]. */
  held(): [number, number];
  readonly options: BodyIntakeOptions;
}

export function makeBodyIntake(options: BodyIntakeOptions = DEFAULT_BODY_INTAKE): BodyIntake {
  let small = 0;
  let large = 0;
  const answers = new WeakMap<IncomingMessage, ServerResponse>();
  return {
    options,
    held: () => [small, large],
    bind: (req, res) => void answers.set(req, res),
    read(req, stream, maxBytes) {
      return new Promise<Buffer>((resolve, reject) => {
        const lengthHeader = req.headers['content-length'];
        const declared = lengthHeader === undefined ? undefined : Number(lengthHeader);
        // What this request holds of each budget; given back when its answer is sent (or the socket dies).
        let mySmall = 0;
        let myLarge = 0;
        let released = false;
        const release = () => {
          if (released) return;
          released = true;
          small -= mySmall;
          large -= myLarge;
          mySmall = myLarge = 0;
        };
        const res = answers.get(req);
        if (res) res.once('close', release);
        else stream.once('close', release);
        /** Reserves room for a body of `total` bytes (so far, or declared); false when the budget is full. */
        const reserve = (total: number): boolean => {
          if (total <= LARGE_BODY) {
            if (total <= mySmall) return true;
            if (small + (total - mySmall) > options.smallBudget) return false;
            small += total - mySmall;
            mySmall = total;
            return true;
          }
          // moves to the large budget: give back the small reservation
          if (mySmall > 0) {
            small -= mySmall;
            mySmall = 0;
          }
          if (total <= myLarge) return true;
          if (large + (total - myLarge) > options.largeBudget) return false;
          large += total - myLarge;
          myLarge = total;
          return true;
        };
        const tooLarge = () => new KilnError('request.too_large', `the request body exceeds ${maxBytes} bytes`, { hint: `bodies on this route are limited to ${maxBytes} bytes` });
        const busy = () => new KilnError('request.busy', 'the server is receiving too many large bodies at once; retry in a second');
        if (declared !== undefined && Number.isFinite(declared)) {
          if (declared > maxBytes) return reject(tooLarge());
          if (!reserve(declared)) return reject(busy());
        }
        const chunks: Buffer[] = [];
        let received = 0;
        let done = false;
        const finish = (e: Error | undefined, body?: Buffer) => {
          if (done) return;
          done = true;
          clearTimeout(timer);
          stream.off('data', onData);
          stream.off('end', onEnd);
          stream.off('error', onError);
          stream.off('aborted', onAborted);
          if (e) {
            chunks.length = 0;
            // stop reading: the answer closes the connection
            stream.pause();
            reject(e);
          } else resolve(body!);
        };
        const timer = setTimeout(() => finish(new KilnError('request.timeout', `the request body did not arrive within ${options.timeoutMs} ms`)), options.timeoutMs);
        const onData = (c: Buffer) => {
          received += c.length;
          if (received > maxBytes) return finish(tooLarge());
          if (declared === undefined && !reserve(received)) return finish(busy());
          chunks.push(c);
        };
        const onEnd = () => finish(undefined, Buffer.concat(chunks, received));
        const onError = (e: Error) => finish(new KilnError('request.aborted', 'the request body was cut off', { cause: e }));
        const onAborted = () => finish(new KilnError('request.aborted', 'the request body was cut off'));
        stream.on('data', onData);
        stream.once('end', onEnd);
        stream.once('error', onError);
        stream.once('aborted', onAborted);
      });
    },
  };
}
