/** `kiln run` end to end: the real CLI, real QEMU (TCG on CI), real guest images. */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { EXIT } from '../../src/core/exit-codes.ts';
import { readCpio, writeCpio, type CpioEntry } from '../../src/image/cpio.ts';
import { makeImageStore, shortId } from '../../src/image/store.ts';
import { isAlive } from '../../src/vm/process.ts';
import { assertNoLeaks, ensureImage, kilnArgs, makeTestDataDir, runKiln, SHARED_DIR } from '../support/kiln.ts';
import { kilnQemuProcesses } from '../support/leaks.ts';

const data = makeTestDataDir();
const run = (args: string[], env: NodeJS.ProcessEnv = {}) => runKiln(data.dir, ['run', ...args], env);
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

before(() => {
  ensureImage('amd64');
});
after(() => {
  assertNoLeaks(data.dir);
  data.cleanup();
});

describe('kiln run: results', () => {
  test('runs a command in a microVM and says when it is emulated', async () => {
    const r = await run(['--', 'uname', '-a']);
    assert.equal(r.code, 0, r.stderr.toString());
    assert.match(r.stdout.toString(), /^Linux .* x86_64/);
    if (!readFileSync('/proc/cpuinfo', 'utf8').match(/\b(vmx|svm)\b/)) assert.match(r.stderr.toString(), /emulated run: .*TCG/);
  });

  for (const [cmd, code] of [
    [['true'], 0],
    [['false'], 1],
    [['sh', '-c', 'exit 42'], 42],
    [['no-such-command', 'x'], EXIT.notFound],
  ] as const) {
    test(`exit code ${code} propagates (${cmd.join(' ')})`, async () => {
      const r = await run(['-q', '--', ...cmd]);
      assert.equal(r.code, code, r.stderr.toString());
    });
  }

  test('20 MB of binary stdout arrives byte-exact, stderr separately', async () => {
    const r = await run(['-q', '--', 'sh', '-c', 'head -c 20000000 /dev/urandom > /work/blob; cat /work/blob; sha256sum /work/blob >&2; printf "\\000\\377\\n" >&2']);
    assert.equal(r.code, 0);
    assert.equal(r.stdout.length, 20_000_000);
    const stderr = r.stderr;
    assert.equal(stderr.toString('latin1'), `${sha(r.stdout)}  /work/blob\n\u0000\u00ff\n`);
  });

  test('arguments and --env values with spaces, quotes and unicode arrive intact; -w sets the directory', async () => {
    const r = await run(['-q', '-e', 'A=x y "z" ü', '-e', "B=it's", '-w', '/tmp/a dir', '--', 'sh', '-c', 'printf "[%s]\\n" "$A" "$B" "$@" "$(pwd)"', 'sh', 'a b', '"q"', 'ü✓', '']);
    assert.equal(r.code, 0, r.stderr.toString());
    assert.equal(r.stdout.toString(), '[x y "z" ü]\n[it\'s]\n[a b]\n["q"]\n[ü✓]\n[]\n[/tmp/a dir]\n');
  });

  test('--arch arm64 runs an arm64 guest through emulation and says so', async () => {
    ensureImage('arm64');
    const r = await run(['--arch', 'arm64', '--', 'uname', '-m']);
    assert.equal(r.code, 0, r.stderr.toString());
    assert.equal(r.stdout.toString(), 'aarch64\n');
    assert.match(r.stderr.toString(), /emulated run: arm64 guest on a amd64 host/);
  });

  test('a guest that allocates beyond its memory is OOM-killed inside the guest; kiln and the host carry on', async () => {
    const r = await run(['-q', '--memory', '128M', '--', 'sh', '-c', 'a=$(head -c 400000000 /dev/zero | tr "\\000" x); echo survived ${#a}']);
    assert.equal(r.code, 128 + 9, `the job was SIGKILLed by the guest's OOM killer (stderr: ${r.stderr.toString()})`);
    assert.doesNotMatch(r.stdout.toString(), /survived/);
    const again = await run(['-q', '--', 'echo', 'fine']);
    assert.equal(again.stdout.toString(), 'fine\n');
  });

  test('the network is closed unless asked for', async () => {
    // A cold VM has no NIC; a warm one has the snapshot's NIC (restricted QEMU user networking), down and
    // without an address: either way no route and no address but loopback.
    for (const mode of ['--cold', '-v']) {
      const r = await run(['-q', mode, '--', 'sh', '-c', 'ip route; ip -4 addr; for n in /sys/class/net/*; do echo "${n##*/} $(cat $n/operstate)"; done']);
      assert.equal(r.code, 0, r.stderr.toString());
      assert.doesNotMatch(r.stdout.toString(), /default|inet (?!127\.)|eth0 up/, mode);
    }
    const open = await run(['-q', '--network', 'user', '--', 'sh', '-c', 'ip route']);
    assert.match(open.stdout.toString(), /default via 10\.0\.2\.2/);
  });
});

describe('kiln run: timeouts, signals and crashes leave nothing behind', () => {
  test('--timeout kills the VM with its own exit code', async () => {
    const r = await run(['--timeout', '20s', '--', 'sleep', '600']);
    assert.equal(r.code, EXIT.timedOut);
    assert.match(r.stderr.toString(), /timed out after 20\.00s/);
    assertNoLeaks(data.dir);
  });

  for (const [sig, code] of [
    ['SIGINT', EXIT.sigint],
    ['SIGTERM', EXIT.sigterm],
  ] as const) {
    test(`${sig} mid-run destroys the VM and exits ${code}`, async () => {
      const p = spawn(process.execPath, kilnArgs(data.dir, ['run', '--', 'sh', '-c', 'echo started; sleep 600']), { stdio: ['ignore', 'pipe', 'pipe'] });
      let stderr = '';
      p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      await new Promise<void>((resolve) => p.stdout.on('data', (d: Buffer) => d.toString().includes('started') && resolve()));
      p.kill(sig);
      const exit = await new Promise<number | null>((resolve) => p.on('close', (c) => resolve(c)));
      assert.equal(exit, code, stderr);
      assert.match(stderr, new RegExp(`interrupted by ${sig}`));
      assertNoLeaks(data.dir);
    });
  }

  test('SIGKILL of kiln takes its VM down; the next kiln start removes what was left', async () => {
    const p = spawn(process.execPath, kilnArgs(data.dir, ['run', '--', 'sh', '-c', 'echo started; sleep 600']), { stdio: ['ignore', 'pipe', 'pipe'] });
    await new Promise<void>((resolve) => p.stdout.on('data', (d: Buffer) => d.toString().includes('started') && resolve()));
    const vmDirs = readdirSync(join(data.dir, 'vms'));
    assert.equal(vmDirs.length, 1);
    const qemuPid = Number(readFileSync(join(data.dir, 'vms', vmDirs[0]!, 'qemu.pid'), 'utf8'));
    p.kill('SIGKILL');
    await new Promise((resolve) => p.on('close', resolve));
    // The parent-death signal takes QEMU down with kiln.
    for (let i = 0; i < 500 && isAlive(qemuPid); i++) await new Promise((r) => setTimeout(r, 10));
    assert.equal(isAlive(qemuPid), false, 'QEMU died with kiln');
    assert.equal(readdirSync(join(data.dir, 'vms')).length, 1, 'the killed kiln could not clean its VM directory');
    const r = await run(['--', 'true']);
    assert.equal(r.code, 0);
    assert.match(r.stderr.toString(), /removed 1 VM\(s\) an earlier kiln left behind/);
    assertNoLeaks(data.dir);
    assert.deepEqual(kilnQemuProcesses().filter((l) => l.includes(vmDirs[0]!)), []);
  });

  test('a boot that never reaches kiln-init names the step and shows the console', async () => {
    // An image whose init announces itself on the console and then hangs.
    const store = makeImageStore(SHARED_DIR);
    const good = ensureImage('amd64');
    const entries = readCpio(readFileSync(store.pathOf(good, good.initrd))).map((e): CpioEntry => {
      const type = (e.mode & 0o170000) === 0o040000 ? 'dir' : (e.mode & 0o170000) === 0o120000 ? 'symlink' : (e.mode & 0o170000) === 0o020000 ? 'chardev' : 'file';
      if (type === 'dir') return { type, path: e.path, mode: e.mode & 0o7777 };
      if (type === 'symlink') return { type, path: e.path, target: e.data.toString() };
      if (type === 'chardev') return { type, path: e.path, major: e.rdev[0], minor: e.rdev[1], mode: e.mode & 0o7777 };
      if (e.path === 'init') return { type, path: e.path, mode: 0o755, data: Buffer.from('#!/bin/busybox sh\n/bin/busybox mount -t devtmpfs dev /dev\necho "kiln-init: start" > /dev/console\necho "stuck on purpose" > /dev/console\nexec /bin/busybox sleep 1000\n') };
      return { type, path: e.path, mode: e.mode & 0o7777, data: e.data };
    });
    const dir = mkdtempSync(join(tmpdir(), 'kiln-badimg-'));
    try {
      const badStore = makeImageStore(dir);
      const staging = badStore.stagingDir();
      writeFileSync(join(staging, 'initrd.cpio'), writeCpio(entries));
      symlinkSync(store.pathOf(good, good.kernel), join(staging, 'vmlinuz'));
      const initrd = readFileSync(join(staging, 'initrd.cpio'));
      const bad = badStore.commit(staging, { ...good, initrd: { name: 'initrd.cpio', sha256: sha(initrd), size: initrd.length } });
      mkdirSync(join(dir, 'cache'), { recursive: true });
      const r = await runKiln(dir, ['run', '--image', shortId(bad.digest), '--', 'true'], { KILN_BOOT_TIMEOUT: '15s' });
      assert.equal(r.code, EXIT.vmFailed, r.stderr.toString());
      const err = r.stderr.toString();
      assert.match(err, /VM failed to boot \(tcg, step: kiln-init start\).*within 15s \[vm\.boot_timeout\]/);
      assert.match(err, /\| stuck on purpose/);
      assertNoLeaks(dir);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('kiln run: bad input gets one clear line, a non-zero exit, and leaves nothing', () => {
  const cases: [string, string[], RegExp, NodeJS.ProcessEnv?][] = [
    ['unknown arch', ['--arch', 'sparc', '--', 'true'], /unknown architecture "sparc" \[input\.unknown_arch\]/],
    ['unparsable size', ['--memory', 'lots', '--', 'true'], /--memory "lots" is not a size/],
    ['too many CPUs', ['--cpus', '999', '--', 'true'], /--cpus 999 is not possible on this host/],
    ['more memory than the host', ['--memory', '100T', '--', 'true'], /--memory 100T is not possible on this host/],
    ['a disk larger than the free space', ['--disk', '900T', '--', 'true'], /does not fit: .* is free/],
    ['bad duration', ['--timeout', 'soon', '--', 'true'], /--timeout "soon" is not a duration/],
    ['no command', ['--'], /no command to run/],
    ['unknown image', ['--image', 'abcdef123456', '--', 'true'], /no amd64 image "abcdef123456"/],
    ['QEMU missing', ['--', 'true'], /qemu-system-x86_64 is not installed.*\nhow to fix: install the Debian package qemu-system-x86/, { PATH: '/nonexistent' }],
  ];
  for (const [name, args, message, env] of cases) {
    test(name, async () => {
      const r = await run(args, env);
      assert.equal(r.code, EXIT.kilnError, r.stderr.toString());
      assert.match(r.stderr.toString(), message);
      assert.match(r.stderr.toString(), /how to fix: /);
      assertNoLeaks(data.dir);
    });
  }

  test('a damaged image is caught by its digest', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'kiln-corrupt-'));
    try {
      const good = ensureImage('amd64');
      const src = makeImageStore(SHARED_DIR);
      const store = makeImageStore(dir);
      const staging = store.stagingDir();
      const initrd = Buffer.from(readFileSync(src.pathOf(good, good.initrd)));
      writeFileSync(join(staging, 'initrd.cpio'), initrd);
      symlinkSync(src.pathOf(good, good.kernel), join(staging, 'vmlinuz'));
      const m = store.commit(staging, { ...good });
      initrd[initrd.length - 1] = (initrd[initrd.length - 1] ?? 0) ^ 0xff;
      writeFileSync(store.pathOf(m, m.initrd), initrd);
      const r = await runKiln(dir, ['run', '--', 'true']);
      assert.equal(r.code, EXIT.kilnError);
      assert.match(r.stderr.toString(), /initramfs does not match its digest .*\[image\.corrupt\]\nhow to fix: remove it with `kiln image rm/);
      assertNoLeaks(dir);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
