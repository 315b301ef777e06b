/**
 * The CLI's API client (src/cli/api-client.ts) for tests and benchmarks, plus `request<T>`: a raw call
 * whose answer type the test names. Answers of `request` are not checked: tests also send bad input and
 * call routes on purpose the way a foreign client would. The CLI itself uses only the contract's typed calls.
 */
import { makeApiClient as makeCliClient, submitJob, type ApiClient as CliClient } from '../../src/cli/api-client.ts';

export interface ApiClient extends CliClient {
  request<T = unknown>(method: string, path: string, body?: unknown, extraHeaders?: Record<string, string>): Promise<T>;
}

export function makeApiClient(o: { server: string; token: string | undefined; ca?: Buffer }): ApiClient {
  const c = makeCliClient(o);
  return {
    server: c.server,
    call: c.call,
    send: c.send,
    logs: c.logs,
    request: async <T,>(method: string, path: string, body?: unknown, extraHeaders?: Record<string, string>) => (await c.send(method, path, body, extraHeaders)) as T,
  };
}

export { submitJob };
