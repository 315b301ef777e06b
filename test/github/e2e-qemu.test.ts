// End to end with a real microVM: a queued job on the GitHub double → kiln's webhook → a JIT runner
// registration → a QEMU VM (minimal image, user networking) whose "runner" is a shell stand-in that
// decodes the JIT config, connects back to the double at 10.0.2.2, takes the job and exits → the VM is
// destroyed and the registration removed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { pino } from 'pino';
import { which } from '../../src/cli/exec.ts';
import { makeStoreImageResolver } from '../../src/agent/images.ts';
import { makeQemuDriver } from '../../src/vm/qemu-driver.ts';
import { assertNoLeaks, ensureImage, makeTestDataDir } from '../support/kiln.ts';
import { assertInvariants, runnerVms, startGitHubHarness, until, vmLogText } from './support/harness.ts';

const onCi = process.env.CI === 'true' || process.env.CI === '1';
const skip = !which('qemu-system-x86_64') && !onCi ? 'QEMU is not installed (kiln setup); skipped locally' : false;
const script = readFileSync(new URL('./support/stand-in-runner.sh', import.meta.url), 'utf8');

void test('a GitHub job runs in a real microVM through a stand-in runner', { skip, timeout: 300_000 }, async () => {
  ensureImage('amd64');
  const data = makeTestDataDir();
  const h = await startGitHubHarness({
    // The double listens on the host's loopback, closed to guests by default: this test opens it on purpose.
    driver: makeQemuDriver({ dataDir: data.dir, accel: 'auto', logger: pino({ level: 'silent' }), egress: { allow: ['127.0.0.1/32'] } }),
    images: makeStoreImageResolver(data.dir),
    config: { runnerImage: 'default', runnerCommand: ['sh', '-c', script], bootTimeoutMs: 120_000, idleGraceMs: 60_000, reconcileMs: 500 },
  });
  try {
    h.double.runnerUrl = h.double.url.replace('127.0.0.1', '10.0.2.2');
    const job = await h.double.queueJob('acme/app', ['kiln-1cpu-1gb-1gb-disk']);
    await until('the job completed on GitHub', () => h.double.jobs.get(job.id)?.status === 'completed', 240_000);
    await until('the VM is gone and the runner deregistered', async () => (await runnerVms(h)).every((v) => ['succeeded', 'failed', 'cancelled'].includes(v.state)) && h.double.runners.size === 0, 60_000);
    const [vm] = await runnerVms(h);
    const text = await vmLogText(h, vm!.id);
    const row = await h.store.db.selectFrom('jobs').select(['exit_code', 'error_code', 'error_message']).where('id', '=', vm!.id).executeTakeFirstOrThrow();
    assert.equal(vm?.state, 'succeeded', `${JSON.stringify(row)}\n${text}`);
    assert.match(text, new RegExp(`Running job ${job.id} on x86_64`));
    assert.deepEqual(await assertInvariants(h), []);
    assert.deepEqual(h.double.violations, []);
  } finally {
    await h.close();
    assertNoLeaks(data.dir);
    data.cleanup();
  }
});
