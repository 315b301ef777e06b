import { test } from 'node:test';
import assert from 'node:assert/strict';
import { encodeJob, isValidEnvName, makeLineSplitter, parseGuestLine } from './channel.ts';

test('jobs encode every value as base64 on its own line, env before args', () => {
  const text = encodeJob({ command: ['sh', '-c', 'echo "$X"\nnext'], env: { X: 'a b ü' }, cwd: '/w d' }, true);
  const lines = text.trimEnd().split('\n');
  assert.deepEqual(lines.map((l) => l.split(' ')[0]), ['ENV', 'ARG', 'ARG', 'ARG', 'CWD', 'NET', 'RUN']);
  const dec = (l: string) => Buffer.from(l.split(' ')[1] ?? '', 'base64').toString('utf8');
  assert.equal(dec(lines[0]!), 'X=a b ü');
  assert.equal(dec(lines[3]!), 'echo "$X"\nnext');
  assert.equal(dec(lines[4]!), '/w d');
  assert.doesNotMatch(encodeJob({ command: ['true'], env: {} }, false), /NET/);
});

test('guest lines parse; junk is reported as unknown', () => {
  assert.deepEqual(parseGuestLine('READY 1.58'), { type: 'ready', uptimeMs: 1580 });
  assert.deepEqual(parseGuestLine('EXIT 127'), { type: 'exit', code: 127 });
  assert.deepEqual(parseGuestLine('STEP run'), { type: 'step', name: 'run' });
  assert.equal(parseGuestLine('EXIT x').type, 'unknown');
});

test('line splitter keeps partial lines across chunks', () => {
  const got: string[] = [];
  const feed = makeLineSplitter((l) => got.push(l));
  feed(Buffer.from('REA'));
  feed(Buffer.from('DY 1\nEXIT'));
  feed(Buffer.from(' 0\n'));
  assert.deepEqual(got, ['READY 1', 'EXIT 0']);
});

test('env names', () => {
  assert.ok(isValidEnvName('A_1'));
  assert.ok(!isValidEnvName('1A') && !isValidEnvName('A-B') && !isValidEnvName(''));
});
