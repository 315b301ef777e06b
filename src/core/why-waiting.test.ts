import { test } from 'node:test';
import assert from 'node:assert/strict';
import { whyWaiting, type FleetHost, type WaitingJob } from './why-waiting.ts';

const GiB = 1024 ** 3;
const job: WaitingJob = { tenant: 't', arch: 'arm64', cpus: 4, memoryBytes: 8 * GiB, diskBytes: 10 * GiB, hostLabels: [] };
const host = (o: Partial<FleetHost> = {}): FleetHost => ({
  name: 'h1',
  state: 'online',
  cordoned: false,
  arch: 'arm64',
  labels: [],
  capacity: { cpus: 8, memoryBytes: 32 * GiB, diskBytes: 100 * GiB },
  used: { cpus: 0, memoryBytes: 0, diskBytes: 0 },
  ...o,
});

test('each reason in order, from no host of the arch to the next pass', () => {
  assert.equal(whyWaiting(job, [host({ arch: 'amd64' })]).code, 'no_host_arch');
  assert.equal(whyWaiting({ ...job, hostLabels: ['gpu'] }, [host()]).code, 'no_host_labels');
  const big = whyWaiting({ ...job, cpus: 16 }, [host()]);
  assert.equal(big.code, 'too_big');
  assert.match(big.message, /largest h1: 8 CPUs/);
  assert.equal(whyWaiting(job, [host({ state: 'asleep' }), host({ name: 'h2', cordoned: true })]).code, 'hosts_unavailable');
  assert.match(whyWaiting(job, [host({ state: 'draining' })]).message, /draining/);
  assert.equal(whyWaiting(job, [host()], { active: 3, limit: 3 }).code, 'tenant_limit');
  assert.equal(whyWaiting(job, [host({ used: { cpus: 6, memoryBytes: 0, diskBytes: 0 } })], { active: 1, limit: null }).code, 'fleet_busy');
  assert.equal(whyWaiting(job, [host()], { active: 0, limit: 5 }).code, 'next_pass');
});
