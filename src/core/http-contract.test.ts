import assert from 'node:assert/strict';
import { test } from 'node:test';
import { API, decodeAnswer, JobOut, LogLine, routePath } from './http-contract.ts';
import { isKilnError } from './errors.ts';

void test('routePath: parameters are filled and encoded, undefined query values left out, the rest in the given order', () => {
  assert.equal(routePath(API.getJob.url, { id: 7 }, undefined), '/v1/jobs/7');
  assert.equal(routePath(API.removeHost.url, { ref: 'a b/c' }, { force: true }), '/v1/hosts/a%20b%2Fc?force=true');
  assert.equal(routePath(API.listJobs.url, undefined, { limit: '50', state: 'queued,running', tenant: undefined, host: 3 }), '/v1/jobs?limit=50&state=queued%2Crunning&host=3');
  assert.equal(routePath(API.listHosts.url, undefined, {}), '/v1/hosts');
  assert.throws(() => routePath(API.getJob.url, {}, undefined), (e: unknown) => isKilnError(e) && e.code === 'client.bad_call');
});

void test('every route of the contract has its own method and path', () => {
  const keys = Object.values(API).map((r) => `${r.method} ${r.url}`);
  assert.equal(new Set(keys).size, keys.length);
});

void test('decodeAnswer passes an answer that fits and refuses one that does not, saying where', () => {
  const job = {
    id: 1, tenant: 'default', state: 'queued', attempt: 1,
    requirements: { arch: 'amd64', cpus: 1, memoryBytes: 1, diskBytes: 1, hostLabels: [] },
    labels: [], image: 'default', command: ['true'], env: { A: '[secret]' }, timeoutMs: 1000, network: 'none', priority: 0,
    hostId: null, exitCode: null, error: null, cancelRequested: false, logBytes: 0, logTruncated: false,
    createdAt: '2026-12-06T00:00:00Z', placedAt: null, bootingAt: null, runningAt: null, finishedAt: null,
    somethingNewer: 'a newer server may add fields',
  };
  assert.equal(decodeAnswer('GET /v1/jobs/:id', JobOut, job).id, 1);
  assert.throws(
    () => decodeAnswer('GET /v1/jobs/:id', JobOut, { ...job, state: 'exploded' }),
    (e: unknown) => isKilnError(e) && e.code === 'client.bad_answer' && /\/state/.test(e.message),
  );
  assert.throws(() => decodeAnswer('GET /v1/jobs/:id', JobOut, 'not a job'), (e: unknown) => isKilnError(e) && e.code === 'client.bad_answer');
});

void test('a log line is a chunk or the end, nothing else', () => {
  const chunk = decodeAnswer('log', LogLine, { id: 3, attempt: 1, stream: 'stdout', data: 'aGk=' });
  assert.ok(chunk.end !== true && chunk.stream === 'stdout');
  const end = decodeAnswer('log', LogLine, { end: true, state: 'succeeded', exitCode: 0, error: null, logTruncated: false });
  assert.ok(end.end === true && end.state === 'succeeded');
  assert.throws(() => decodeAnswer('log', LogLine, { end: true, state: 'succeeded' }), (e: unknown) => isKilnError(e) && e.code === 'client.bad_answer');
});
