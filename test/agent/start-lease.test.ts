// At-most-once starts: `kiln up` SIGKILLed between a job's start and the record of it. The moment is made
// deterministic by KILN_TEST_HOLD_STARTS=1 (test-only: the server never stores a job's running state nor
// answers its start request, and logs "holding the start of job N"). The job's command appends a line to a
// marker file (the memory driver's `append`), so the test counts how often it really ran. Before the start
// lease, the command ran before its running state was stored, and the restart requeued it: it ran twice.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnKiln, killAll, freePort } from './processes.ts';
import { storeKinds, makeTestDatabase } from '../store/test-stores.ts';
import { makeApiClient } from '../support/test-client.ts';
import { makeSecret } from '../../src/store/tokens.ts';
import type { Job } from '../../src/core/job.ts';

after(killAll);

async function until<T>(what: string, f: () => Promise<T> | T, pred: (v: T) => boolean, timeoutMs = 60_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await Promise.resolve().then(f).catch(() => undefined);
    if (v !== undefined && pred(v)) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

for (const { kind, skip } of storeKinds()) {
  void test(`kiln up SIGKILLed between a job's start and its running record: the command runs at most once (${kind})`, { skip, timeout: 180_000 }, async () => {
    const dir = mkdtempSync(join(tmpdir(), 'kiln-start-lease-'));
    const marker = join(dir, 'ran');
    const admin = makeSecret('admin');
    const db = kind === 'postgres' ? await makeTestDatabase() : undefined;
    try {
      const port = await freePort();
      const url = `http://127.0.0.1:${port}`;
      const args = ['up', '--driver', 'memory', '--listen', `127.0.0.1:${port}`, '--data-dir', join(dir, 'kiln')];
      const env = { KILN_ADMIN_TOKEN: admin, KILN_TEST_MEMORY_APPEND_DIR: dir, ...(db ? { KILN_DATABASE_URL: db.url } : {}) };
      const first = spawnKiln(args, { ...env, KILN_TEST_HOLD_STARTS: '1' });
      await first.waitForOutput(/kiln is up at/, 90_000);
      const client = makeApiClient({ server: url, token: admin });
      const job = await client.request<Job>('POST', '/v1/jobs', { command: ['sh', '-c', `append ${marker} ran; sleep 0.2`], cpus: 1 });
      // The guest is up and the job's start is under way (held by the hook), or, without a start lease, the
      // command already ran.
      await until('the job to be starting', () => first.output().includes(`holding the start of job ${job.id}`) || existsSync(marker), (v) => v);
      await first.kill('SIGKILL');

      const second = spawnKiln(args, env);
      await second.waitForOutput(/kiln is up at/, 90_000);
      const end = await until('the job to end', () => client.request<Job>('GET', `/v1/jobs/${job.id}`), (j) => ['succeeded', 'failed', 'lost', 'cancelled', 'timed_out'].includes(j.state));
      const runs = existsSync(marker) ? readFileSync(marker, 'utf8').trim().split('\n').length : 0;
      assert.ok(runs <= 1, `the command ran ${runs} times`);
      assert.ok(end.state === 'succeeded' || end.state === 'lost', `job ended ${end.state}`);
      // The start was never recorded, so it provably had not started: requeued, and ran exactly once.
      assert.equal(end.state, 'succeeded');
      assert.equal(runs, 1);
      assert.equal(end.attempt, 2);
      await second.kill('SIGTERM');
    } finally {
      await killAll();
      await db?.drop();
      rmSync(dir, { recursive: true, force: true });
    }
  });
}
