// The runner image profile's install and start path, with a stand-in runner tarball (no network here):
// checksum before unpacking, path or URL, and the start script handing run.sh the JIT config.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { installActionsRunner, RUNNER_DIR, START_RUNNER } from '../../src/image/actions-runner.ts';

test('the runner is installed from a checked tarball (path or URL) and started with --jitconfig', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'kiln-runner-'));
  const server = createServer();
  try {
    const src = join(dir, 'src');
    mkdirSync(join(src, 'bin'), { recursive: true });
    // The stand-in run.sh records how it was started and what it sees in the environment.
    writeFileSync(join(src, 'run.sh'), '#!/bin/sh\nprintf "%s\\n" "$@" > "$KILN_TEST_OUT"\nenv | grep -c KILN_RUNNER_JITCONFIG >> "$KILN_TEST_OUT" || true\npwd >> "$KILN_TEST_OUT"\n');
    chmodSync(join(src, 'run.sh'), 0o755);
    writeFileSync(join(src, 'bin', 'Runner.Listener'), 'stand-in');
    const tarball = join(dir, 'actions-runner-linux-x64-2.999.0.tar.gz');
    assert.equal(spawnSync('tar', ['-czf', tarball, '-C', src, '.']).status, 0);
    const sha = createHash('sha256').update(readFileSync(tarball)).digest('hex');

    const root = join(dir, 'root');
    await assert.rejects(installActionsRunner({ rootDir: root, source: tarball, sha256: '0'.repeat(64), cacheDir: join(dir, 'cache') }), (e: Error & { code?: string }) => e.code === 'image.checksum_mismatch');
    assert.ok(!existsSync(join(root, RUNNER_DIR)), 'nothing is unpacked from a tarball that does not match');

    server.on('request', (_req, res) => res.end(readFileSync(tarball)));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/runner.tar.gz`;
    await assert.rejects(installActionsRunner({ rootDir: root, source: url, sha256: 'f'.repeat(64), cacheDir: join(dir, 'cache') }), (e: Error & { code?: string }) => e.code === 'image.checksum_mismatch');
    const { runnerDir, startScript } = await installActionsRunner({ rootDir: root, source: url, sha256: sha, cacheDir: join(dir, 'cache') });
    assert.ok(existsSync(join(runnerDir, 'bin', 'Runner.Listener')));
    assert.equal(startScript, join(root, START_RUNNER));

    const out = join(dir, 'out');
    const run = spawnSync(startScript, [], { env: { PATH: process.env.PATH, KILN_RUNNER_DIR: runnerDir, KILN_RUNNER_JITCONFIG: 'eyJqaXQiOiJ4In0=', KILN_TEST_OUT: out }, encoding: 'utf8' });
    assert.equal(run.status, 0, run.stderr);
    assert.deepEqual(readFileSync(out, 'utf8').trim().split('\n'), ['--jitconfig', 'eyJqaXQiOiJ4In0=', '0', runnerDir]);
    const missing = spawnSync(startScript, [], { env: { PATH: process.env.PATH, KILN_RUNNER_DIR: runnerDir }, encoding: 'utf8' });
    assert.equal(missing.status, 2);
    assert.match(missing.stderr, /KILN_RUNNER_JITCONFIG is not set/);
  } finally {
    server.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
