/** A real `kiln server` process on either store, for tests that must see the process itself (memory, logs, feeds). */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { makeTestDatabase, type StoreKind } from '../store/test-stores.ts';
import { spawnKiln, freePort, type KilnProcess } from '../agent/processes.ts';
import { makeApiClient, type ApiClient } from '../../src/cli/api-client.ts';
import { makeSecret } from '../../src/store/tokens.ts';

export interface ServerProcess {
  proc: KilnProcess;
  url: string;
  admin: string;
  client: ApiClient;
  dir: string;
  /** An API token of `role` for `tenant`. */
  token(name: string, role: string, tenant: string): Promise<string>;
  close(): Promise<void>;
}

export async function startServerProcess(kind: StoreKind, env: Record<string, string> = {}, args: string[] = []): Promise<ServerProcess> {
  const dir = mkdtempSync(join(tmpdir(), 'kiln-srvp-'));
  const db = kind === 'postgres' ? await makeTestDatabase() : undefined;
  const admin = makeSecret('admin');
  const port = await freePort();
  const proc = spawnKiln(['server', '--listen', `127.0.0.1:${port}`, '--data-dir', join(dir, 'data'), ...args], {
    KILN_ADMIN_TOKEN: admin,
    ...(db ? { KILN_DATABASE_URL: db.url } : {}),
    ...env,
  });
  try {
    await proc.waitForOutput(/listening at/, 60_000);
  } catch (e) {
    await proc.kill('SIGKILL');
    await db?.drop();
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
  const scheme = args.includes('--tls-cert') ? 'https' : 'http';
  const url = `${scheme}://127.0.0.1:${port}`;
  const client = makeApiClient({ server: url, token: admin });
  return {
    proc,
    url,
    admin,
    client,
    dir,
    token: async (name, role, tenant) => (await client.request<{ secret: string }>('POST', '/v1/tokens', { name, role, tenant })).secret,
    async close() {
      await proc.kill('SIGTERM');
      await db?.drop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
