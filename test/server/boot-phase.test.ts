// When an agent reports a job as booting: a VM still booting 100 ms after its launch is reported (booting,
// then running at its start lease); one that asks to start sooner goes from placed straight to running, so its
// start is not held behind a booting record of the same row. Real server, real agents (memory driver), both stores.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { storeKinds } from '../store/test-stores.ts';
import { jobReaches, startHarness, type Harness } from './harness.ts';
import type { Job } from '../../src/core/job.ts';

type JobWithTransitions = Job & { transitions: { attempt: number; state: string; detail: string | null }[] };

for (const { kind, skip } of storeKinds()) {
  void describe(`boot phase reports on ${kind}`, { skip }, () => {
    let h: Harness;
    before(async () => {
      h = await startHarness(kind);
      await h.addAgent('quick', { arches: ['amd64'], cpus: 2, bootMs: 0 }, { arch: 'amd64' });
      await h.addAgent('slow', { arches: ['arm64'], cpus: 2, bootMs: 600 }, { arch: 'arm64' });
    });
    after(async () => {
      await h?.close();
    });

    const runOn = async (arch: 'amd64' | 'arm64'): Promise<JobWithTransitions> => {
      const job = await h.client.request<Job>('POST', '/v1/jobs', { command: ['echo', 'hi'], cpus: 1, arch });
      await jobReaches(h, job.id, ['succeeded']);
      return h.client.request<JobWithTransitions>('GET', `/v1/jobs/${job.id}`);
    };

    void test('a VM up within 100 ms goes from placed to running; its boot time is kept with the start', async () => {
      const j = await runOn('amd64');
      assert.deepEqual(j.transitions.map((t) => t.state), ['queued', 'placed', 'running', 'succeeded']);
      assert.match(j.transitions.find((t) => t.state === 'running')?.detail ?? '', /^cold start, ready in \d+ ms$/);
    });

    void test('a VM that boots for longer is reported booting first', async () => {
      const j = await runOn('arm64');
      assert.deepEqual(j.transitions.map((t) => t.state), ['queued', 'placed', 'booting', 'running', 'succeeded']);
    });
  });
}
