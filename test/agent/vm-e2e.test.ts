// End to end with real VMs: a real `kiln agent` process with the QEMU driver joins an in-process server;
// a job submitted through the API boots a microVM (TCG here), streams its output and returns its exit code.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { startHarness } from '../server/harness.ts';
import { spawnKiln, killAll } from './processes.ts';
import { submitAndFollow } from '../../src/cli/submit.ts';
import { ensureImage, makeTestDataDir } from '../support/kiln.ts';
import { findLeaks } from '../support/leaks.ts';
import { which } from '../../src/cli/exec.ts';

after(killAll);

const onCi = process.env.CI === 'true' || process.env.CI === '1';
const skip = !which('qemu-system-x86_64') && !onCi ? 'QEMU is not installed (kiln setup); skipped locally' : false;

const sink = () => {
  const parts: Buffer[] = [];
  return Object.assign(new Writable({ write: (c: Buffer, _e, cb) => (parts.push(Buffer.from(c)), cb()) }), { text: () => Buffer.concat(parts).toString() });
};

void test('a job through server and agent boots a real microVM and returns its output and exit code', { skip, timeout: 300_000 }, async () => {
  ensureImage('amd64');
  const data = makeTestDataDir();
  const h = await startHarness('pglite');
  try {
    const connected = h.server.events.waitFor('host.connected', (e) => e.name === 'vm-host', 60_000);
    const agent = spawnKiln(['agent', '--server', h.url, '--token', h.agentToken, '--name', 'vm-host', '--driver', 'qemu', '--arch', 'amd64', '--data-dir', data.dir]);
    await connected;
    const hosts = await h.client.request<{ hosts: { name: string; driver: string; accel: string }[] }>('GET', '/v1/hosts');
    assert.equal(hosts.hosts[0]?.driver, 'qemu');
    const out = sink();
    const err = sink();
    const r = await submitAndFollow(h.client, { command: ['sh', '-c', 'uname -m; echo to-stderr >&2; exit 3'], cpus: 1, memory: '256M', disk: '64M', timeout: '2m' }, { stdout: out, stderr: err });
    assert.equal(out.text(), 'x86_64\n');
    assert.equal(err.text(), 'to-stderr\n');
    assert.equal(r.exitCode, 3);
    assert.equal(r.end.state, 'failed');
    await agent.kill('SIGTERM');
    // Only what this test started: its data directory, and cgroups named after job VMs (other suites on
    // the machine may be running VMs of their own).
    assert.deepEqual(findLeaks([data.dir]).filter((l) => l.includes(data.dir) || /\/kiln\/job-/.test(l)), []);
  } finally {
    await h.close();
    data.cleanup();
  }
});
