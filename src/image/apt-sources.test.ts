import assert from 'node:assert/strict';
import { test } from 'node:test';
import { pickDebianSource } from './apt-sources.ts';

test('deb822 sources: the main archive, not security, not the updates pocket', () => {
  const text = [
    'Types: deb',
    'URIs: http://deb.debian.org/debian-security',
    'Suites: bookworm-security',
    'Components: main',
    '',
    'Types: deb deb-src',
    '# a comment',
    'URIs: http://mirror.example/debian',
    'Suites: bookworm-updates bookworm',
    'Components: main',
  ].join('\n');
  assert.deepEqual(pickDebianSource([['debian.sources', text]]), { uri: 'http://mirror.example/debian', suite: 'bookworm' });
});

test('one-line sources.list with options; disabled deb822 stanzas are skipped', () => {
  const disabled = 'Enabled: no\nTypes: deb\nURIs: http://disabled.example/debian\nSuites: bookworm\n';
  const list = '# deb http://old.example/debian bookworm main\ndeb-src http://src.example/debian bookworm main\ndeb [arch=amd64 signed-by=/k.gpg] https://deb.example/debian trixie main\n';
  assert.deepEqual(pickDebianSource([['a.sources', disabled], ['sources.list', list]]), { uri: 'https://deb.example/debian', suite: 'trixie' });
});

test('no usable source', () => {
  assert.equal(pickDebianSource([['sources.list', 'deb http://security.debian.org/debian-security bookworm-security main\n']]), undefined);
  assert.equal(pickDebianSource([]), undefined);
});
