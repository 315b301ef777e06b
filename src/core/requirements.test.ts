import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseLabels, formatKilnLabel, DEFAULT_REQUIREMENTS } from './requirements.ts';
import { isKilnError } from './errors.ts';

const GiB = 1024 ** 3;

void test('labels: the grammar of DESIGN.md', () => {
  assert.deepEqual(parseLabels(['kiln']), DEFAULT_REQUIREMENTS);
  assert.equal(parseLabels(['kiln-arm64']).arch, 'arm64');
  const r = parseLabels(['self-hosted', 'kiln-4cpu-16gb']);
  assert.equal(r.cpus, 4);
  assert.equal(r.memoryBytes, 16 * GiB);
  assert.equal(r.arch, 'amd64');
  const a = parseLabels(['kiln-arm64-8cpu-32gb', 'linux', 'gpu']);
  assert.deepEqual([a.arch, a.cpus, a.memoryBytes, a.hostLabels], ['arm64', 8, 32 * GiB, ['gpu']]);
  assert.equal(parseLabels(['kiln-2cpu-4gb-100gb-disk']).diskBytes, 100 * GiB);
  assert.equal(parseLabels(['kiln', 'ARM64']).arch, 'arm64');
  assert.equal(formatKilnLabel(a), 'kiln-arm64-8cpu-32gb');
});

void test('labels: unknown kiln labels and conflicts are user errors naming the label', () => {
  for (const bad of [['kiln-huge'], ['kiln-4cpu-4cpu'], ['kiln-16gb-4cpu'], ['kiln-0cpu'], ['kiln-riscv64'], ['kiln-'], ['kiln-arm64-x']]) {
    assert.throws(() => parseLabels(bad), (e) => isKilnError(e, 'label.unknown') && e.message.includes(bad[0] ?? ''), bad.join());
  }
  assert.throws(() => parseLabels(['kiln', 'kiln-arm64']), (e) => isKilnError(e, 'label.conflict'));
  assert.throws(() => parseLabels(['kiln-arm64', 'x64']), (e) => isKilnError(e, 'label.conflict'));
  assert.throws(() => parseLabels(['has space']), (e) => isKilnError(e, 'label.invalid'));
});
