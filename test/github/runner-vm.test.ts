// The runner image profile end to end, with real QEMU: `kiln image build --profile runner` from a stand-in
// runner release tarball (no network here for the real one), then a queued job on the GitHub double →
// kiln's webhook → a JIT registration → a VM from that image running the default command,
// /opt/kiln/start-runner, which hands the JIT config to the tarball's run.sh as `--jitconfig` → the
// stand-in connects back to the double, takes the job, exits → the VM is destroyed, the runner deregistered.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { which } from '../../src/cli/exec.ts';
import { makeStoreImageResolver } from '../../src/agent/images.ts';
import { makeQemuDriver } from '../../src/vm/qemu-driver.ts';
import { assertNoLeaks, KILN_BIN, makeTestDataDir, SHARED_DIR } from '../support/kiln.ts';
import { ensureCiImage } from '../vm/ci-image-support.ts';
import { assertInvariants, runnerVms, startGitHubHarness, until, vmLogText } from './support/harness.ts';

const onCi = process.env.CI === 'true' || process.env.CI === '1';
const missing = ['qemu-system-x86_64', 'debootstrap', 'mkfs.ext4'].filter((c) => !which(c));
const skip = process.arch !== 'x64' ? 'builds the native amd64 runner image' : missing.length > 0 && !onCi ? `${missing.join(', ')} not installed (kiln setup --with-test-deps); skipped locally` : process.getuid?.() !== 0 && !onCi ? 'building a runner image needs root' : false;

/** The real runner's run.sh, stood in for: takes `--jitconfig <config>` and runs the guest stand-in with it. */
const RUN_SH = `#!/bin/sh
# kiln test stand-in for the Actions runner's run.sh (see test/github/runner-vm.test.ts).
if [ "\${1:-}" != --jitconfig ] || [ -z "\${2:-}" ]; then echo "usage: run.sh --jitconfig <config>" >&2; exit 2; fi
echo "stand-in runner in $(pwd) as $(id -un); JIT config in the environment: $(env | grep -c '^KILN_RUNNER_JITCONFIG=')"
KILN_RUNNER_JITCONFIG=$2
wget() { busybox wget "$@"; }
. ./stand-in-runner.sh
`;

/** A byte-for-byte reproducible tarball (sorted, fixed times and owners, gzip without a name or time). */
function standInTarball(): { path: string; sha256: string } {
  const dir = join(SHARED_DIR, 'stand-in-runner');
  const src = join(dir, 'src');
  rmSync(src, { recursive: true, force: true });
  mkdirSync(join(src, 'bin'), { recursive: true });
  writeFileSync(join(src, 'run.sh'), RUN_SH);
  chmodSync(join(src, 'run.sh'), 0o755);
  copyFileSync(new URL('./support/stand-in-runner.sh', import.meta.url), join(src, 'stand-in-runner.sh'));
  writeFileSync(join(src, 'bin', 'Runner.Listener'), 'stand-in\n');
  const path = join(dir, 'actions-runner-linux-x64-2.999.0.tar.gz');
  const tar = spawnSync('sh', ['-c', `tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "${src}" -cf - . | gzip -n -9 > "${path}"`], { encoding: 'utf8' });
  assert.equal(tar.status, 0, tar.stderr);
  return { path, sha256: createHash('sha256').update(readFileSync(path)).digest('hex') };
}

void test('kiln image build --profile runner refuses a bad checksum or the wrong architecture before any debootstrap', { skip }, () => {
  const t = standInTarball();
  const data = makeTestDataDir();
  try {
    const bad = spawnSync(process.execPath, [KILN_BIN, 'image', 'build', '--profile', 'runner', '--runner-tarball', t.path, '--runner-sha256', '0'.repeat(64), '--data-dir', data.dir], { encoding: 'utf8', timeout: 120_000 });
    assert.notEqual(bad.status, 0);
    assert.match(bad.stderr, /has SHA-256 [0-9a-f]{64}, not 0{64} \[image\.checksum_mismatch\]/);
    assert.doesNotMatch(bad.stderr, /debootstrap/);
    const wrong = spawnSync(process.execPath, [KILN_BIN, 'image', 'build', '--profile', 'runner', '--arch', 'arm64', '--runner-tarball', t.path, '--runner-sha256', t.sha256, '--data-dir', data.dir], { encoding: 'utf8', timeout: 120_000 });
    assert.notEqual(wrong.status, 0);
    assert.match(wrong.stderr, /is the x64 runner, not the one for arm64 \(arm64\) \[input\.runner_arch\]/);
  } finally {
    data.cleanup();
  }
});

void test('a GitHub job runs in a runner-profile VM: start-runner hands the JIT config to run.sh', { skip, timeout: 25 * 60_000 }, async () => {
  const t = standInTarball();
  const image = ensureCiImage('amd64', 'runner', ['--runner-tarball', t.path, '--runner-sha256', t.sha256]);
  assert.equal(image.profile, 'runner');
  assert.ok(image.packages.includes(`actions-runner=2.999.0+sha256.${t.sha256}`), image.packages.join(' '));
  for (const p of ['libicu72', 'libkrb5-3', 'libssl3']) assert.ok(image.packages.some((x) => x.startsWith(`${p}=`)), `${p} is in the image`);

  const data = makeTestDataDir();
  const h = await startGitHubHarness({
    // The double listens on the host's loopback, closed to guests by default: this test opens it on purpose.
    driver: makeQemuDriver({ dataDir: data.dir, accel: 'auto', logger: pino({ level: 'silent' }), egress: { allow: ['127.0.0.1/32'] } }),
    images: makeStoreImageResolver(data.dir),
    // The defaults: the newest runner image for the arch, and /opt/kiln/start-runner.
    config: { runnerImage: 'runner', runnerCommand: ['/opt/kiln/start-runner'], bootTimeoutMs: 600_000, idleGraceMs: 120_000, reconcileMs: 500 },
  });
  try {
    h.double.runnerUrl = h.double.url.replace('127.0.0.1', '10.0.2.2');
    const job = await h.double.queueJob('acme/app', ['kiln-1cpu-1gb-2gb-disk']);
    await until('the job completed on GitHub', () => h.double.jobs.get(job.id)?.status === 'completed', 15 * 60_000);
    await until('the VM is gone and the runner deregistered', async () => (await runnerVms(h)).every((v) => ['succeeded', 'failed', 'cancelled'].includes(v.state)) && h.double.runners.size === 0, 120_000);
    const [vm] = await runnerVms(h);
    const text = await vmLogText(h, vm!.id);
    assert.equal(vm?.state, 'succeeded', text);
    assert.match(text, /stand-in runner in \/opt\/actions-runner as root; JIT config in the environment: 0/);
    assert.match(text, new RegExp(`Running job ${job.id} on x86_64`));
    assert.deepEqual(await assertInvariants(h), []);
    assert.deepEqual(h.double.violations, []);
  } finally {
    await h.close();
    assertNoLeaks(data.dir);
    data.cleanup();
  }
});

void test('warm: a GitHub job runs in a runner VM restored from a snapshot, with or without the repository cache, and its JIT config is in no snapshot file', { skip, timeout: 25 * 60_000 }, async () => {
  const t = standInTarball();
  const image = ensureCiImage('amd64', 'runner', ['--runner-tarball', t.path, '--runner-sha256', t.sha256]);
  const data = makeTestDataDir();
  const h = await startGitHubHarness({
    // Warm starts as `kiln run` has them: the first VM of the image and shape builds the snapshot (a template
    // that never sees a job), then restores from it; the JIT config is sent after the restore.
    // A 10-minute boot limit (the template's too): at load 20 the runner image's cold boot took over 180 s.
    driver: makeQemuDriver({ dataDir: data.dir, accel: 'auto', bootTimeoutMs: 600_000, logger: pino({ level: 'silent' }), egress: { allow: ['127.0.0.1/32'] }, snapshots: {} }),
    images: makeStoreImageResolver(data.dir),
    // By digest: `runner` is the newest runner image in the shared store, which may be another checkout's.
    config: { runnerImage: image.digest, runnerCommand: ['/opt/kiln/start-runner'], bootTimeoutMs: 600_000, idleGraceMs: 120_000, reconcileMs: 500 },
  });
  try {
    h.double.runnerUrl = h.double.url.replace('127.0.0.1', '10.0.2.2');
    const job = await h.double.queueJob('acme/app', ['kiln-1cpu-1gb-2gb-disk']);
    await until('the job completed on GitHub', () => h.double.jobs.get(job.id)?.status === 'completed', 15 * 60_000);
    await until('the VM is gone and the runner deregistered', async () => (await runnerVms(h)).every((v) => ['succeeded', 'failed', 'cancelled'].includes(v.state)) && h.double.runners.size === 0, 120_000);
    const [vm] = await runnerVms(h);
    const text = await vmLogText(h, vm!.id);
    assert.equal(vm?.state, 'succeeded', text);
    assert.match(text, new RegExp(`Running job ${job.id} on x86_64`));
    const got = await h.client.request<{ vmStart: string | null; transitions: { state: string; detail: string | null }[] }>('GET', `/v1/jobs/${vm!.id}`);
    assert.equal(got.vmStart, 'warm', JSON.stringify(got.transitions));

    // A job with the repository's cache (kiln-cache) starts warm too, from a snapshot with a cache slot: the
    // runner image's restore hook binds Docker's data into /cache and restarts the daemons behind the job.
    const cached = await h.double.queueJob('acme/app', ['kiln-1cpu-1gb-2gb-disk', 'kiln-cache']);
    await until('the cache job completed on GitHub', () => h.double.jobs.get(cached.id)?.status === 'completed', 15 * 60_000);
    await until('its VM is gone and the runner deregistered', async () => (await runnerVms(h)).every((v) => ['succeeded', 'failed', 'cancelled'].includes(v.state)) && h.double.runners.size === 0, 120_000);
    const cvm = (await runnerVms(h)).find((v) => v.id !== vm!.id);
    const ctext = await vmLogText(h, cvm!.id);
    assert.equal(cvm?.state, 'succeeded', ctext);
    assert.match(ctext, new RegExp(`Running job ${cached.id} on x86_64`));
    const cgot = await h.client.request<{ vmStart: string | null; cache: { key: string } | null; transitions: { state: string; detail: string | null }[] }>('GET', `/v1/jobs/${cvm!.id}`);
    assert.equal(cgot.cache?.key, 'github/acme/app', 'the runner VM had the repository\'s cache');
    assert.equal(cgot.vmStart, 'warm', JSON.stringify(cgot.transitions));

    const snapDir = join(data.dir, 'snapshots');
    assert.ok(readdirSync(snapDir).some((e) => /^[0-9a-f]{24}$/.test(e)), 'a snapshot was built');
    assert.ok(h.double.issuedJitConfigs.length > 0);
    for (const jit of h.double.issuedJitConfigs) {
      // The config as sent, and the runner secret inside it (as the guest would write it out).
      const files = JSON.parse(Buffer.from(jit, 'base64').toString()) as Record<string, string>;
      const secret = (JSON.parse(Buffer.from(files['.credentials']!, 'base64').toString()) as { data: { secret: string } }).data.secret;
      for (const needle of [jit, secret]) {
        const g = spawnSync('grep', ['-r', '-a', '-l', '-F', needle, snapDir]);
        assert.equal(g.status, 1, `found in snapshot files: ${g.stdout.toString()}`);
      }
    }
    assert.deepEqual(await assertInvariants(h), []);
    assert.deepEqual(h.double.violations, []);
  } finally {
    await h.close();
    assertNoLeaks(data.dir);
    data.cleanup();
  }
});

void test('the stand-in tarball is reproducible, so the cached runner image is reused between runs', { skip }, () => {
  const a = standInTarball();
  const b = standInTarball();
  assert.equal(a.sha256, b.sha256);
  assert.ok(existsSync(a.path));
});
