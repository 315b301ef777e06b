/**
 * The conformance suite every VmDriver passes: the real QEMU driver (test/vm/qemu-conformance.test.ts)
 * and the in-memory driver used by scheduler tests (test/vm/memory-conformance.test.ts). A driver
 * plugs in how to express a few job intents in its own command language; the behaviour checked is the same.
 */
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import type { Arch } from '../../src/core/arch.ts';
import { isKilnError } from '../../src/core/errors.ts';
import type { GuestImageRef, GuestJob, RunningVm, VmDriver, VmResult, VmSpec } from '../../src/vm/driver.ts';

export interface ConformanceCommands {
  exit(code: number): string[];
  /** Writes `out` to stdout and `err` to stderr exactly (no added newline), then exits with `code`. */
  write(out: string, err: string, code: number): string[];
  /** Prints the value of each named environment variable, then each argument, one per line. */
  echoEnvAndArgs(names: string[], args: string[]): string[];
  sleep(seconds: number): string[];
}

export interface ConformanceTarget {
  name: string;
  arch: Arch;
  driver(): VmDriver;
  image(): GuestImageRef;
  /** The same image with a file that no longer matches its digest, for drivers that verify images. */
  corruptImage?(): GuestImageRef;
  commands: ConformanceCommands;
  /** Throws if the driver left anything behind (processes, files, cgroups). */
  assertClean(): void;
  /** Generous bound for one short job, boot included (TCG guests are slow). */
  jobTimeoutMs: number;
}

let seq = 0;

export function runVmDriverConformance(t: ConformanceTarget): void {
  describe(`VmDriver conformance: ${t.name}`, () => {
    const driver = t.driver();
    const spec = (job: Partial<GuestJob> & { command: string[] }, extra: Partial<VmSpec> = {}): VmSpec => ({
      id: `conf-${process.pid}-${++seq}`,
      arch: t.arch,
      cpus: 1,
      memoryBytes: 256 * 1024 * 1024,
      diskBytes: 256 * 1024 * 1024,
      image: t.image(),
      job: { env: {}, ...job },
      timeoutMs: t.jobTimeoutMs,
      ...extra,
    });
    const run = async (s: VmSpec): Promise<{ result: VmResult; stdout: Buffer; stderr: Buffer; vm: RunningVm; runningCalls: number }> => {
      const out: Buffer[] = [];
      const err: Buffer[] = [];
      let runningCalls = 0;
      let outputBeforeRunning = false;
      const vm = await driver.start(s, {
        stdout: (c) => {
          if (runningCalls === 0) outputBeforeRunning = true;
          out.push(Buffer.from(c));
        },
        stderr: (c) => {
          if (runningCalls === 0) outputBeforeRunning = true;
          err.push(Buffer.from(c));
        },
        running: () => runningCalls++,
      });
      const result = await vm.done;
      assert.equal(outputBeforeRunning, false, 'the job wrote output before the driver reported the guest running');
      return { result, stdout: Buffer.concat(out), stderr: Buffer.concat(err), vm, runningCalls };
    };
    const exitCode = (r: VmResult) => (r.outcome === 'exited' ? r.exitCode : `${r.outcome}${'message' in r ? `: ${r.message}` : ''}`);

    after(() => {
      assert.deepEqual(driver.list(), [], 'no VM is listed once every test is done');
      t.assertClean();
    });

    test('reports the architecture it runs', async () => {
      const caps = await driver.capabilities();
      const a = caps.arches.find((x) => x.arch === t.arch);
      assert.ok(a && a.accel !== 'none', `capabilities list ${t.arch}: ${JSON.stringify(caps.arches)}`);
      assert.ok(caps.cpus >= 1 && caps.memoryBytes > 0);
    });

    for (const code of [0, 1, 42]) {
      test(`exit code ${code} comes back as the job's exit code`, async () => {
        const { result, runningCalls } = await run(spec({ command: t.commands.exit(code) }));
        assert.equal(exitCode(result), code);
        assert.equal(runningCalls, 1, 'the guest coming up is reported once');
      });
    }

    test('stdout and stderr stay separate and exact', async () => {
      const { result, stdout, stderr } = await run(spec({ command: t.commands.write('to out\nline 2', 'to err ✓', 3) }));
      assert.equal(exitCode(result), 3);
      assert.equal(stdout.toString('utf8'), 'to out\nline 2');
      assert.equal(stderr.toString('utf8'), 'to err ✓');
    });

    test('arguments and environment arrive intact (spaces, quotes, unicode)', async () => {
      const env = { GREETING: 'hello "big" world', UNI: 'ünïcødé ✓ 日本', EMPTY: '' };
      const args = ['a b', "it's", '"quoted"', '$HOME', 'ü✓', '-n'];
      const { result, stdout } = await run(spec({ command: t.commands.echoEnvAndArgs(Object.keys(env), args), env }));
      assert.equal(exitCode(result), 0);
      assert.equal(stdout.toString('utf8'), [...Object.values(env), ...args].map((l) => `${l}\n`).join(''));
    });

    test('the timeout kills the VM and says so', async () => {
      const started = Date.now();
      const { result } = await run(spec({ command: t.commands.sleep(600) }, { timeoutMs: Math.min(t.jobTimeoutMs, 15_000) }));
      assert.equal(result.outcome, 'timed_out');
      assert.ok(Date.now() - started < 60_000, 'the VM did not outlive its timeout by much');
      assert.deepEqual(driver.list(), []);
    });

    test('kill stops a running VM; kill is idempotent; list shows it while it runs', async () => {
      const s = spec({ command: t.commands.sleep(600) });
      const vm = await driver.start(s, { stdout: () => undefined, stderr: () => undefined });
      assert.ok(driver.list().some((v) => v.id === s.id && v.arch === t.arch), 'a started VM is listed');
      await Promise.all([vm.kill('test says stop'), vm.kill('again')]);
      const r = await vm.done;
      assert.equal(r.outcome, 'killed');
      assert.equal(vm.phase(), 'stopped');
      assert.ok(!driver.list().some((v) => v.id === s.id));
    });

    test('two VMs at once do not interfere', async () => {
      const [a, b] = await Promise.all([run(spec({ command: t.commands.write('A'.repeat(1000), '', 5) })), run(spec({ command: t.commands.write('B'.repeat(2000), 'b', 6) }))]);
      assert.equal(exitCode(a!.result), 5);
      assert.equal(exitCode(b!.result), 6);
      assert.equal(a!.stdout.toString(), 'A'.repeat(1000));
      assert.equal(b!.stdout.toString(), 'B'.repeat(2000));
      assert.equal(a!.stderr.length, 0);
    });

    test('an id already in use is refused', async () => {
      const s = spec({ command: t.commands.sleep(600) });
      const vm = await driver.start(s, { stdout: () => undefined, stderr: () => undefined });
      try {
        await assert.rejects(driver.start({ ...s }, { stdout: () => undefined, stderr: () => undefined }), (e) => isKilnError(e, 'vm.exists'));
      } finally {
        await vm.kill('done');
      }
    });

    if (t.corruptImage) {
      const corrupt = t.corruptImage;
      test('an image that does not match its digest never boots', async () => {
        await assert.rejects(driver.start(spec({ command: t.commands.exit(0) }, { image: corrupt() }), { stdout: () => undefined, stderr: () => undefined }), (e) =>
          isKilnError(e, 'image.corrupt'),
        );
        assert.deepEqual(driver.list(), []);
      });
    }

    test('sweep finds nothing to remove after clean runs', async () => {
      const { removed } = await driver.sweep();
      assert.deepEqual(removed, []);
    });
  });
}

/** How a POSIX shell in a guest expresses the conformance intents. */
export const shellCommands: ConformanceCommands = {
  exit: (code) => ['sh', '-c', `exit ${code}`],
  write: (out, err, code) => ['sh', '-c', 'printf %s "$1"; printf %s "$2" >&2; exit "$3"', 'sh', out, err, String(code)],
  echoEnvAndArgs: (names, args) => ['sh', '-c', `${names.map((n) => `printf '%s\\n' "$${n}"; `).join('')}for a; do printf '%s\\n' "$a"; done`, 'sh', ...args],
  sleep: (s) => ['sleep', String(s)],
};
