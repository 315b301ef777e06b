/** Test harness: a real server (real HTTP, real WebSockets) on a real store, and in-process agents. */
import { pino } from 'pino';
import { makeServer, type KilnServer } from '../../src/server/server.ts';
import type { ServerOptions } from '../../src/server/context.ts';
import { makeAgent, type Agent, type AgentOptions } from '../../src/agent/agent.ts';
import { memoryImageResolver } from '../../src/agent/images.ts';
import { makeMemoryDriver, type MemoryDriverOptions } from '../../src/vm/memory-driver.ts';
import { createToken, makeSecret } from '../../src/store/tokens.ts';
import { makeApiClient, type ApiClient } from '../support/test-client.ts';
import { makeTestStore, type StoreKind } from '../store/test-stores.ts';
import type { Store } from '../../src/store/store.ts';
import type { Job } from '../../src/core/job.ts';
import type { JobState } from '../../src/core/job-state.ts';

export const quietLogger = () => pino({ level: process.env.KILN_TEST_LOG ?? 'silent' });

export interface Harness {
  store: Store & { url?: string };
  server: KilnServer;
  url: string;
  admin: string;
  agentToken: string;
  client: ApiClient;
  agents: Agent[];
  addAgent(name: string, driver?: MemoryDriverOptions, more?: Partial<AgentOptions>): Promise<Agent>;
  close(): Promise<void>;
}

/** Resolves once the job is in one of `states` (checks after subscribing, so no event can slip by). */
export async function jobReaches(h: Pick<Harness, 'server' | 'client'>, jobId: number, states: JobState[], timeoutMs = 20_000): Promise<void> {
  let resolveEv!: () => void;
  const viaEvent = new Promise<void>((r) => (resolveEv = r));
  const off = h.server.events.on('job.state', (e) => {
    if (e.job.id === jobId && states.includes(e.to)) resolveEv();
  });
  try {
    const now = await h.client.request<Job>('GET', `/v1/jobs/${jobId}`);
    if (states.includes(now.state)) return;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, rej) => (timer = setTimeout(() => rej(new Error(`job ${jobId} did not reach ${states.join('|')} in ${timeoutMs} ms`)), timeoutMs)));
    try {
      return await Promise.race([viaEvent, timeout]);
    } finally {
      clearTimeout(timer);
    }
  } finally {
    off();
  }
}

export async function startHarness(kind: StoreKind, options: Partial<ServerOptions> = {}): Promise<Harness> {
  const store = await makeTestStore(kind);
  const admin = makeSecret('admin');
  const server = await makeServer({ store, logger: quietLogger(), adminToken: admin, options: { pollMs: 100, heartbeatMs: 1000, ...options }, leaderIntervalMs: 200 });
  const url = await server.listen({ host: '127.0.0.1', port: 0 });
  const { secret: agentToken } = await createToken(store.db, { name: 'agents', role: 'agent' });
  const agents: Agent[] = [];
  const h: Harness = {
    store,
    server,
    url,
    admin,
    agentToken,
    client: makeApiClient({ server: url, token: admin }),
    agents,
    async addAgent(name, driver = {}, more = {}) {
      const a = makeAgent({
        servers: [url],
        token: agentToken,
        name,
        driver: makeMemoryDriver({ arches: ['amd64', 'arm64'], ...driver }),
        images: memoryImageResolver,
        logger: quietLogger(),
        minBackoffMs: 50,
        maxBackoffMs: 500,
        ...more,
      });
      agents.push(a);
      const c = a.connected();
      await a.start();
      await c;
      return a;
    },
    async close() {
      for (const a of agents) await a.stop();
      await server.close();
      await store.close();
    },
  };
  return h;
}
