/**
 * The composite action (action.yml): its combine step is run with bash exactly as GitHub would run it
 * (inputs as environment variables, GITHUB_OUTPUT and friends in temp files) against a real registry.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFile, readdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { after, before, describe, test } from 'node:test';
import { parse } from 'yaml';
import { Harness, skopeoRaw, type Registry } from './harness.ts';

const execFileP = promisify(execFile);
const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const h = new Harness();
let reg: Registry;
const refs: string[] = [];

interface Action {
  inputs: Record<string, { default?: string }>;
  outputs: Record<string, { value: string }>;
  runs: { using: string; steps: { id?: string; run: string; env?: Record<string, string> }[] };
}

void describe('GitHub Action (action.yml)', () => {
  before(async () => {
    reg = await h.startRegistry();
    for (const [arch, variant] of [['amd64'], ['arm64', 'v8']] as [string, string?][]) {
      const name = await h.buildImage({ arch, ...(variant ? { variant } : {}) });
      refs.push(`${reg.host}/ci/build-${arch}@${await h.buildahPush(name, `docker://${reg.host}/ci/build-${arch}:tmp`, 'oci')}`);
    }
    // The action runs the bundled CLI (bin/kiln.js → dist/kiln.mjs); build it as `npm ci` would, unless the
    // bundle is newer than every composer source (rebuilding under other tests that run it is a race).
    const bundle = await stat(join(ROOT, 'dist', 'kiln.mjs')).catch(() => undefined);
    const sources = [join(ROOT, 'src', 'cli', 'manifest.ts'), join(ROOT, 'src', 'cli', 'main.ts'), ...(await readdir(join(ROOT, 'src', 'oci'))).map((f) => join(ROOT, 'src', 'oci', f))];
    const newest = Math.max(...(await Promise.all(sources.map(async (f) => (await stat(f)).mtimeMs))));
    if (!bundle || bundle.mtimeMs < newest) await execFileP(process.execPath, ['scripts/build.mjs'], { cwd: ROOT });
  });
  after(async () => {
    await h.cleanup();
    assert.deepEqual(h.livePids(), []);
  });

  void test('the combine step composes, pushes and sets the digest and metadata outputs', async () => {
    const action = parse(await readFile(join(ROOT, 'action.yml'), 'utf8')) as Action;
    assert.equal(action.runs.using, 'composite');
    const step = action.runs.steps.find((s) => s.id === 'create');
    assert.ok(step);
    assert.match(action.outputs.digest?.value ?? '', /steps\.create\.outputs\.digest/);
    const tmp = await h.tempDir('kiln-action-');
    const files = { GITHUB_OUTPUT: join(tmp, 'output'), GITHUB_STEP_SUMMARY: join(tmp, 'summary') };
    await writeFile(files.GITHUB_OUTPUT, '');
    const env: Record<string, string> = {
      PATH: process.env.PATH ?? '',
      HOME: tmp,
      RUNNER_TEMP: tmp,
      ...files,
      KILN_ACTION_PATH: ROOT,
      IN_TARGET: `${reg.host}/app/combined`,
      IN_TAGS: 'v1.0.0, latest',
      IN_SOURCES: `${refs[0]}\n  ${refs[1]}\n`,
      IN_ANNOTATIONS: 'org.opencontainers.image.source=https://example.invalid/app\n',
      IN_INDEX_TYPE: action.inputs['index-type']?.default ?? '',
      IN_ATTESTATIONS: action.inputs.attestations?.default ?? '',
      IN_CREATED: 'now',
      IN_FILE: '',
      IN_CROSS: 'false',
      IN_DRY_RUN: 'false',
      IN_EXTRA: '--concurrency 2',
    };
    // The step's env block names exactly the variables set above (besides the action path).
    assert.deepEqual(Object.keys(step.env ?? {}).sort(), Object.keys(env).filter((k) => k.startsWith('IN_') || k === 'KILN_ACTION_PATH').sort());
    await execFileP('bash', ['-e', '-c', step.run], { env, cwd: tmp });
    const out = await readFile(files.GITHUB_OUTPUT, 'utf8');
    const digest = /^digest=(sha256:[a-f0-9]{64})$/m.exec(out)?.[1];
    assert.ok(digest, out);
    const meta = JSON.parse(/metadata<<KILN_EOF\n([\s\S]*?)\nKILN_EOF/.exec(out)?.[1] ?? '{}') as { tags: string[]; platforms: string[] };
    assert.deepEqual(meta.tags, ['v1.0.0', 'latest']);
    assert.deepEqual(meta.platforms, ['linux/amd64', 'linux/arm64/v8']);
    for (const tag of ['v1.0.0', 'latest']) {
      const raw = await skopeoRaw(`${reg.host}/app/combined:${tag}`);
      assert.equal(raw.digest, digest);
      assert.equal((raw.json.annotations as Record<string, string>)['org.opencontainers.image.source'], 'https://example.invalid/app');
      assert.match((raw.json.annotations as Record<string, string>)['org.opencontainers.image.created'] ?? '', /^\d{4}-\d{2}-\d{2}T/);
    }
  });
});
