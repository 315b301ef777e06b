// The fleet commands through the real CLI: kiln up, tokens, hosts, jobs (submit, ls, logs -f, cancel),
// and an agent with a bad token.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { spawnKiln, killAll, freePort, runKilnCommand } from '../agent/processes.ts';
import { KILN_BIN, KILN_NODE_ARGS, REPO } from '../support/kiln.ts';
import { KILN_VERSION } from '../../src/core/version.ts';

after(killAll);

const kiln = runKilnCommand;

void test('kiln up, then the fleet commands against it', { timeout: 180_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'kiln-cli-'));
  try {
    const port = await freePort();
    const up = spawnKiln(['up', '--driver', 'memory', '--listen', `127.0.0.1:${port}`, '--data-dir', dir]);
    await up.waitForOutput(/kiln is up at/);
    const env = { KILN_SERVER: `http://127.0.0.1:${port}`, KILN_DATA_DIR: dir, KILN_TOKEN: '' };
    assert.match(readFileSync(join(dir, 'admin.token'), 'utf8'), /^kiln_api_/);

    let r = await kiln(['hosts', 'ls'], env);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /online/);

    r = await kiln(['jobs', 'submit', '--', 'sh', '-c', 'echo out; echo err >&2; exit 7'], env);
    assert.equal(r.code, 7, r.stderr);
    assert.equal(r.stdout, 'out\n');
    assert.match(r.stderr, /^err$/m);

    r = await kiln(['jobs', 'submit', '--label', 'kiln-nope', '--', 'true'], env);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /unknown kiln label "kiln-nope"/);

    r = await kiln(['jobs', 'submit', '--detach', '--', 'sh', '-c', 'sleep 0.3; echo late'], env);
    assert.equal(r.code, 0, r.stderr);
    const id = r.stdout.trim();
    r = await kiln(['jobs', 'logs', '-f', id], env);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'late\n');

    r = await kiln(['jobs', 'submit', '--detach', '--', 'sleep', 'infinity'], env);
    const long = r.stdout.trim();
    r = await kiln(['jobs', 'cancel', long], env);
    assert.equal(r.code, 0, r.stderr);
    r = await kiln(['jobs', 'logs', '-f', long], env);
    assert.equal(r.code, 130, 'a cancelled job follows to exit code 130');

    r = await kiln(['jobs', 'ls', '--state', 'succeeded,failed,cancelled'], env);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.trim().split('\n').length, 4, r.stdout);

    r = await kiln(['tokens', 'create', '--role', 'agent', '--name', 'x'], env);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout.trim(), /^kiln_agt_/);
    r = await kiln(['tokens', 'create', '--role', 'read-only'], env);
    const ro = r.stdout.trim();
    r = await kiln(['jobs', 'submit', '--', 'true'], { ...env, KILN_TOKEN: ro });
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /read-only token may not/);

    r = await kiln(['tenants', 'limit', 'team-a', '2'], env);
    assert.equal(r.code, 0, r.stderr);
    r = await kiln(['tenants', 'limit', 'team-a', 'lots'], env);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /"lots" is not a job count/);
    r = await kiln(['tenants', 'limit', 'team-b', '1'], { ...env, KILN_TOKEN: ro });
    assert.notEqual(r.code, 0, 'a read-only token may not set limits');
    r = await kiln(['tenants', 'ls', '--json'], env);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(JSON.parse(r.stdout), [{ name: 'team-a', maxConcurrent: 2, active: 0, queued: 0 }]);
    // Tenancy: a token of the default tenant sees only its own tenant's row, not team-a's.
    r = await kiln(['tenants', 'ls', '--json'], { ...env, KILN_TOKEN: ro });
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(JSON.parse(r.stdout), []);
    r = await kiln(['tenants', 'limit', 'team-a', 'none'], env);
    assert.equal(r.code, 0, r.stderr);
    r = await kiln(['tenants', 'ls'], env);
    assert.doesNotMatch(r.stdout, /team-a/, 'a tenant without a limit or work is not listed');

    const host = (await kiln(['hosts', 'ls', '--json'], env)).stdout;
    const name = (JSON.parse(host) as { name: string }[])[0]!.name;
    for (const verb of ['drain', 'uncordon', 'cordon', 'uncordon']) {
      r = await kiln(['hosts', verb, name], env);
      assert.equal(r.code, 0, r.stderr);
    }
    r = await kiln(['hosts', 'rm', name], env);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /host\.busy|is online/);

    r = await kiln(['agent', '--server', env.KILN_SERVER, '--token', ro, '--driver', 'memory', '--name', 'intruder'], {});
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /refused this agent/);

    await up.kill('SIGTERM');
    assert.equal(up.proc.exitCode, 0, up.output());
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

void test('bin/kiln.js runs as a program, with the node flags of its first line', async () => {
  const pkg = JSON.parse(readFileSync(join(REPO, 'package.json'), 'utf8')) as { version: string };
  assert.equal(KILN_VERSION, pkg.version);
  assert.deepEqual(KILN_NODE_ARGS, ['--v8-pool-size=1']);
  // Executed directly, as `kiln` after `npm link`: /usr/bin/env -S splits the flags off the first line.
  const r = spawnSync(KILN_BIN, ['--version'], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout, `${pkg.version}\n`);
  // Only as kiln's own first argument: after a subcommand it belongs to that command (here, refused).
  const after = spawnSync(KILN_BIN, ['jobs', 'ls', '-V'], { encoding: 'utf8' });
  assert.equal(after.status, 2, after.stdout);
  assert.match(after.stderr, /unknown option '-V'/);
});
