/** A real `kiln server` process on either store, for tests that must see the process itself (memory, logs, feeds). */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createHmac } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { makeTestDatabase, type StoreKind } from '../store/test-stores.ts';
import { spawnBuiltKiln, freePort, type KilnProcess } from '../agent/processes.ts';
import { makeApiClient, type ApiClient } from '../support/test-client.ts';
import { makeSecret } from '../../src/store/tokens.ts';
import { openStore, type Store } from '../../src/store/store.ts';
import { APP_ID, appKeys, WEBHOOK_SECRET } from '../github/support/harness.ts';

export interface ServerProcess {
  proc: KilnProcess;
  url: string;
  admin: string;
  client: ApiClient;
  dir: string;
  /** Stops the process (SIGTERM) and opens its store here, to look at what it stored. */
  stopAndOpenStore(): Promise<Store>;
  /** An API token of `role` for `tenant`. */
  token(name: string, role: string, tenant: string): Promise<string>;
  close(): Promise<void>;
}

export async function startServerProcess(kind: StoreKind, env: Record<string, string> = {}, args: string[] = [], ca?: Buffer): Promise<ServerProcess> {
  const dir = mkdtempSync(join(tmpdir(), 'kiln-srvp-'));
  const db = kind === 'postgres' ? await makeTestDatabase() : undefined;
  const admin = makeSecret('admin');
  const port = await freePort();
  const proc = spawnBuiltKiln(['server', '--listen', `127.0.0.1:${port}`, '--data-dir', join(dir, 'data'), ...args], {
    KILN_ADMIN_TOKEN: admin,
    ...(db ? { KILN_DATABASE_URL: db.url } : {}),
    ...env,
  });
  try {
    await proc.waitForOutput(/listening at/, 150_000);
  } catch (e) {
    await proc.kill('SIGKILL');
    await db?.drop();
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
  const scheme = args.includes('--tls-cert') ? 'https' : 'http';
  const url = `${scheme}://127.0.0.1:${port}`;
  const client = makeApiClient({ server: url, token: admin, ...(ca ? { ca } : {}) });
  return {
    proc,
    url,
    admin,
    client,
    dir,
    async stopAndOpenStore() {
      await proc.kill('SIGTERM');
      return db ? openStore({ databaseUrl: db.url, poolSize: 2 }) : openStore({ dataDir: join(dir, 'data', 'db') });
    },
    token: async (name, role, tenant) => (await client.request<{ secret: string }>('POST', '/v1/tokens', { name, role, tenant })).secret,
    async close() {
      await proc.kill('SIGTERM');
      await db?.drop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/**
 * KILN_GITHUB_* for a server process whose GitHub API is unreachable (the webhook intake needs no API: it
 * checks the signature and stores the delivery). The key file is written into `dir`.
 */
export function githubEnv(dir: string): Record<string, string> {
  const keyFile = join(dir, 'app.pem');
  writeFileSync(keyFile, appKeys().privatePem, { mode: 0o600 });
  return { KILN_GITHUB_APP_ID: APP_ID, KILN_GITHUB_PRIVATE_KEY_FILE: keyFile, KILN_GITHUB_WEBHOOK_SECRET: WEBHOOK_SECRET, KILN_GITHUB_ALLOW: 'acme', KILN_GITHUB_API_URL: 'http://127.0.0.1:9' };
}

export const signBody = (body: Buffer | string): string => `sha256=${createHmac('sha256', WEBHOOK_SECRET).update(body).digest('hex')}`;

/** The resident memory of a process, in bytes (Linux). */
export function rssOf(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) * 1024 : 0;
}
