/// <reference lib="dom" />
/** The browser's side of the kiln API: the token in the Authorization header, errors as kiln's { error }. */

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

/** One message of the live feed, as the HTTP contract describes it. */
import type { LiveDelta } from '../core/http-contract.ts';
export type { LiveDelta };

export class Api {
  constructor(readonly token: string) {}

  headers(): Record<string, string> {
    return { authorization: `Bearer ${this.token}` };
  }

  async get<T>(path: string): Promise<T> {
    const r = await fetch(path, { headers: this.headers() });
    if (!r.ok) {
      const body = (await r.json().catch(() => ({}))) as { error?: { code?: string; message?: string } };
      throw new ApiError(r.status, body.error?.code ?? 'http.error', body.error?.message ?? `${r.status} ${r.statusText}`);
    }
    return (await r.json()) as T;
  }

  async blob(path: string): Promise<Blob> {
    const r = await fetch(path, { headers: this.headers() });
    if (!r.ok) throw new ApiError(r.status, 'http.error', `${r.status} ${r.statusText}`);
    return r.blob();
  }

  /** Reads a streamed answer line by line until it ends or `signal` aborts. */
  async lines(path: string, signal: AbortSignal, onLine: (line: string) => void): Promise<void> {
    const r = await fetch(path, { headers: this.headers(), signal });
    if (!r.ok || !r.body) throw new ApiError(r.status, 'http.error', `${r.status} ${r.statusText}`);
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += value;
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        onLine(buf.slice(0, nl));
        buf = buf.slice(nl + 1);
      }
    }
    if (buf) onLine(buf);
  }

  /** The live feed (server-sent events read through fetch); reconnects until `signal` aborts. */
  live(signal: AbortSignal, onDelta: (d: LiveDelta) => void, onStatus: (up: boolean) => void): void {
    let backoff = 500;
    const run = async () => {
      while (!signal.aborted) {
        let event = '';
        try {
          await this.lines('/v1/live', signal, (line) => {
            if (line.startsWith('event: ')) event = line.slice(7);
            else if (line.startsWith('data: ')) {
              if (event === 'hello') {
                backoff = 500;
                onStatus(true);
              } else if (event === 'delta') onDelta(JSON.parse(line.slice(6)) as LiveDelta);
            }
          });
        } catch {
          // reconnect below
        }
        if (signal.aborted) return;
        onStatus(false);
        await new Promise((r) => setTimeout(r, backoff));
        backoff = Math.min(backoff * 2, 10_000);
      }
    };
    void run();
  }
}
