/**
 * The wait, boot and pickup figures count exactly the jobs that ran: in /metrics (histogram counts by arch
 * and label set) and in the reports API (percentiles over a window), on both stores. GitHub jobs go through
 * the GitHub double and the stand-in runner, so pickup comes from GitHub's own created_at and in_progress.
 */
import { describe, test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { isTerminal } from '../../src/core/job-state.ts';
import { storeKinds } from '../store/test-stores.ts';
import { startGitHubHarness, until, runnerVms, type GitHubHarness } from '../github/support/harness.ts';

/** Sums a histogram's `_count` samples in Prometheus text, per label set of the filter. */
export function histogramCount(text: string, name: string, match: Record<string, string> = {}): number {
  let n = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}_count`)) continue;
    const labels = Object.fromEntries([...line.matchAll(/(\w+)="([^"]*)"/g)].map((m) => [m[1], m[2]]));
    if (Object.entries(match).every(([k, v]) => labels[k] === v)) n += Number(line.split(' ').pop());
  }
  return n;
}

for (const { kind, skip } of storeKinds()) {
  describe(`figures (${kind})`, { skip }, () => {
    let h: GitHubHarness | undefined;
    afterEach(async () => {
      await h?.close();
      h = undefined;
    });

    test('histograms and percentiles have exactly the counts of the jobs run', async () => {
      h = await startGitHubHarness({ kind });
      const plain = [
        { labels: ['kiln-2cpu-4gb'], command: ['sh', '-c', 'echo a'] },
        { labels: ['kiln-2cpu-4gb'], command: ['sh', '-c', 'echo b'] },
        { command: ['sh', '-c', 'echo c'] },
      ];
      const ids: number[] = [];
      for (const p of plain) ids.push((await h.client.request<{ id: number }>('POST', '/v1/jobs', p)).id);
      // Jobs that never start (no arm64 host; too big for any host) count in neither histogram.
      const arm = await h.client.request<{ id: number }>('POST', '/v1/jobs', { labels: ['kiln-arm64'], command: ['true'] });
      const big = await h.client.request<{ id: number }>('POST', '/v1/jobs', { disk: '2000G', command: ['true'] });
      const gh1 = await h.double.queueJob('acme/app', ['self-hosted', 'kiln-4cpu-8gb']);
      const gh2 = await h.double.queueJob('acme/app', ['self-hosted', 'kiln-4cpu-8gb']);
      await until('the plain jobs finished', async () => {
        const { jobs } = await h!.client.request<{ jobs: { id: number; state: string }[] }>('GET', '/v1/jobs?limit=100');
        return ids.every((id) => isTerminal((jobs.find((j) => j.id === id)?.state ?? 'queued') as never));
      });
      await until('both GitHub jobs completed', () => [gh1, gh2].every((j) => h!.double.jobs.get(j.id)?.status === 'completed'), 30_000);
      await until('the runner VMs ended', async () => (await runnerVms(h!)).every((v) => isTerminal(v.state)));
      // GitHub may report completed before kiln has ingested the in_progress webhook: wait for both pickups.
      await until('both in_progress webhooks are ingested', async () => (await h!.store.db.selectFrom('github_usage').select('job_id').where('started_at', 'is not', null).execute()).length === 2);
      const vms = await runnerVms(h);
      await h.server.figures.flush();

      // the text /metrics serves (read from the registry: the endpoint may need a token of its own)
      const text = await h.server.ctx.metrics.registry.metrics();
      const ran = plain.length + vms.length;
      assert.equal(histogramCount(text, 'kiln_job_wait_seconds'), ran, text.split('\n').filter((l) => l.startsWith('kiln_job_wait_seconds_count')).join('\n'));
      assert.equal(histogramCount(text, 'kiln_job_boot_seconds'), ran);
      assert.equal(histogramCount(text, 'kiln_job_wait_seconds', { arch: 'amd64', labels: 'kiln-2cpu-4gb' }), 2);
      assert.equal(histogramCount(text, 'kiln_job_wait_seconds', { arch: 'amd64', labels: '(none)' }), 1);
      assert.equal(histogramCount(text, 'kiln_github_pickup_seconds'), 2);
      assert.equal(histogramCount(text, 'kiln_github_pickup_seconds', { arch: 'amd64', labels: 'kiln-4cpu-8gb,self-hosted' }), 2);
      // Both were taken by kiln's runners, whose online times are known: the pickup's first part has both.
      assert.equal(histogramCount(text, 'kiln_github_runner_online_seconds', { arch: 'amd64', labels: 'kiln-4cpu-8gb,self-hosted' }), 2);

      const t = await h.client.request<{ jobs: { arch: string; labels: string[]; count: number; wait: { p50: number; p99: number } }[]; pickup: { count: number; p50: number; p99: number; runnerOnline: { count: number; p50: number; p99: number } }[] }>(
        'GET',
        // the double's payloads carry GitHub's example times (2024), so the window reaches back that far
        '/v1/reports/timings?window=3650d',
      );
      assert.equal(
        t.jobs.reduce((a, g) => a + g.count, 0),
        ran,
      );
      assert.equal(t.jobs.find((g) => g.labels.join() === 'kiln-2cpu-4gb')?.count, 2);
      for (const g of t.jobs) assert.ok(g.wait.p50 >= 0 && g.wait.p99 >= g.wait.p50);
      assert.equal(
        t.pickup.reduce((a, g) => a + g.count, 0),
        2,
      );
      assert.equal(
        t.pickup.reduce((a, g) => a + g.runnerOnline.count, 0),
        2,
      );
      for (const g of t.pickup) assert.ok(g.runnerOnline.p50 >= 0 && g.runnerOnline.p50 <= g.p50, JSON.stringify(g));
      await assert.rejects(h.client.request('GET', '/v1/reports/timings?window=soon'), /window/);
      const q = await h.client.request<{ jobs: { id: number; why: { code: string } }[] }>('GET', '/v1/queue');
      assert.equal(q.jobs.find((j) => j.id === big.id)?.why.code, 'too_big');
      assert.equal(q.jobs.find((j) => j.id === arm.id)?.why.code, 'no_host_arch');
    });
  });
}
