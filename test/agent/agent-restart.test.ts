// A real agent process is SIGKILLed mid-job, restarted, and the server reconciles: the job that was running
// is lost, the job that had not started is requeued and runs again. Also: orphans are killed on reconnect,
// a misbehaving agent is disconnected without losing accepted work.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import WebSocket from 'ws';
import { startHarness, jobReaches } from '../server/harness.ts';
import { spawnKiln, killAll } from './processes.ts';
import { agentUrl } from '../../src/agent/agent.ts';
import { loseJob } from '../../src/store/jobs.ts';
import type { Job } from '../../src/core/job.ts';

after(killAll);

type JobWithTransitions = Job & { transitions: { attempt: number; state: string }[] };

void test('agent SIGKILL mid-job, restart, reconcile: running work is lost, unstarted work is requeued and runs', async () => {
  const h = await startHarness('pglite');
  try {
    const agentArgs = ['agent', '--server', h.url, '--token', h.agentToken, '--name', 'victim', '--driver', 'memory', '--sim-boot-ms', '1500'];
    const connected = h.server.events.waitFor('host.connected', (e) => e.name === 'victim', 30_000);
    const agent = spawnKiln(agentArgs);
    await connected;
    const running = await h.client.request<Job>('POST', '/v1/jobs', { command: ['sleep', '30'], cpus: 1 });
    await jobReaches(h, running.id, ['running']);
    const booting = await h.client.request<Job>('POST', '/v1/jobs', { command: ['sh', '-c', 'echo again'], cpus: 1 });
    await jobReaches(h, booting.id, ['booting']);

    const offline = h.server.events.waitFor('host.disconnected', (e) => e.name === 'victim');
    await agent.kill('SIGKILL');
    await offline;
    assert.equal((await h.client.request<Job>('GET', `/v1/jobs/${running.id}`)).state, 'running', 'nothing is decided while the host may come back');

    const lost = h.server.events.waitFor('job.state', (e) => e.job.id === running.id && e.to === 'lost', 30_000);
    const rerun = h.server.events.waitFor('job.state', (e) => e.job.id === booting.id && e.to === 'succeeded', 30_000);
    const again = spawnKiln(agentArgs);
    await lost;
    await rerun;
    const r = await h.client.request<JobWithTransitions>('GET', `/v1/jobs/${running.id}`);
    assert.equal(r.state, 'lost');
    assert.equal(r.error?.code, 'job.lost');
    const b = await h.client.request<JobWithTransitions>('GET', `/v1/jobs/${booting.id}`);
    assert.equal(b.attempt, 2);
    assert.deepEqual(
      b.transitions.map((t) => `${t.attempt}:${t.state}`),
      ['1:queued', '1:placed', '1:booting', '1:lost', '2:queued', '2:placed', '2:booting', '2:running', '2:succeeded'],
    );
    let logs = '';
    await h.client.logs(booting.id, { follow: false, onChunk: (_s, d) => void (logs += d.toString()) });
    assert.equal(logs, 'again\n');
    await again.kill('SIGTERM');
  } finally {
    await h.close();
  }
});

void test('on reconnect the server stops VMs it does not know about', async () => {
  const h = await startHarness('pglite');
  try {
    const agent = await h.addAgent('orphanage');
    const job = await h.client.request<Job>('POST', '/v1/jobs', { command: ['sleep', 'infinity'], cpus: 1 });
    await jobReaches(h, job.id, ['running']);
    // The server gives the job up while the agent is away (as the leader does for a host gone too long).
    const link = h.server.registry.get(job.hostId ?? (await h.client.request<Job>('GET', `/v1/jobs/${job.id}`)).hostId!);
    assert.ok(link);
    const back = once(agent.events, 'connected');
    link.close(1012, 'test: drop the connection');
    await loseJob(h.store.db, job.id, 1, 'test: given up');
    const stopped = once(agent.events, 'finished');
    await back;
    const [result] = (await stopped) as [{ jobId: number; outcome: string }];
    assert.equal(result.jobId, job.id);
    assert.equal(result.outcome, 'killed');
    assert.equal((await h.client.request<Job>('GET', `/v1/jobs/${job.id}`)).state, 'lost');
  } finally {
    await h.close();
  }
});

void test('an agent that breaks the protocol is disconnected; accepted jobs are kept', async () => {
  const h = await startHarness('pglite');
  try {
    await h.addAgent('good');
    const before = await h.client.request<Job>('POST', '/v1/jobs', { command: ['true'] });
    await jobReaches(h, before.id, ['succeeded']);
    for (const bad of ['not json', JSON.stringify({ type: 'job.done', result: { jobId: 1 } }), JSON.stringify({ type: 'hello', protocol: 1, host: { name: 'x y' }, running: [], finished: [] })]) {
      const ws = new WebSocket(agentUrl(h.url), { headers: { authorization: `Bearer ${h.agentToken}` } });
      await once(ws, 'open');
      const msgs: string[] = [];
      ws.on('message', (d: Buffer) => msgs.push(d.toString()));
      ws.send(bad);
      const [code] = (await once(ws, 'close')) as [number];
      assert.equal(code, 1008);
      assert.match(msgs[0] ?? '', /"type":"error","code":"protocol\./);
    }
    // an oversized message is refused by the WebSocket layer itself (1009: message too big)
    const big = new WebSocket(agentUrl(h.url), { headers: { authorization: `Bearer ${h.agentToken}` } });
    await once(big, 'open');
    big.send(JSON.stringify({ type: 'hello', pad: 'x'.repeat(2 * 1024 * 1024) }));
    const [bigCode] = (await once(big, 'close')) as [number];
    assert.equal(bigCode, 1009);
    const j = await h.client.request<Job>('GET', `/v1/jobs/${before.id}`);
    assert.equal(j.state, 'succeeded');
    const after = await h.client.request<Job>('POST', '/v1/jobs', { command: ['true'] });
    await jobReaches(h, after.id, ['succeeded']);
  } finally {
    await h.close();
  }
});
