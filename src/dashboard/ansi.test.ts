import { test } from 'node:test';
import assert from 'node:assert/strict';
import { AnsiParser, color256 } from './ansi.ts';

test('colours, bold and reset become classes; text stays text', () => {
  const p = new AnsiParser();
  const segs = p.push('plain \x1b[1;31mred bold\x1b[0m <b>after</b>');
  assert.deepEqual(segs, [
    { text: 'plain ', classes: [] },
    { text: 'red bold', classes: ['ansi-bold', 'ansi-fg-1'] },
    { text: ' <b>after</b>', classes: [] },
  ]);
});

test('an escape split across chunks is held until complete', () => {
  const p = new AnsiParser();
  assert.deepEqual(p.push('a\x1b[3'), [{ text: 'a', classes: [] }]);
  assert.deepEqual(p.push('2mgreen'), [{ text: 'green', classes: ['ansi-fg-2'] }]);
  assert.deepEqual(p.push('\x1b'), []);
  assert.deepEqual(p.push('[94mbright'), [{ text: 'bright', classes: ['ansi-fg-12'] }]);
});

test('256 and true colours go inline; cursor moves and OSC titles are dropped', () => {
  const p = new AnsiParser();
  assert.deepEqual(p.push('\x1b[38;5;196mx\x1b[48;2;1;2;3my\x1b[2K\x1b]0;title\x07z'), [
    { text: 'x', classes: [], color: 'rgb(255,0,0)' },
    { text: 'y', classes: [], color: 'rgb(255,0,0)', background: 'rgb(1,2,3)' },
    { text: 'z', classes: [], color: 'rgb(255,0,0)', background: 'rgb(1,2,3)' },
  ]);
  assert.equal(color256(232), 'rgb(8,8,8)');
  assert.equal(color256(3), 3);
});
