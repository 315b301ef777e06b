import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isKilnError } from '../core/errors.ts';
import { parseAnnotationArgs, parseManifestSpecYaml, parseSourceArg } from './spec-file.ts';

const D = `sha256:${'b'.repeat(64)}`;

void test('source arguments: ref alone, with a platform override, with platform filters', () => {
  assert.deepEqual(parseSourceArg(`r.io/a@${D}`, 1), { ref: `r.io/a@${D}` });
  assert.deepEqual(parseSourceArg(`r.io/a@${D},platform=linux/armhf`, 1), { ref: `r.io/a@${D}`, platform: { os: 'linux', architecture: 'arm', variant: 'v7' } });
  assert.deepEqual(parseSourceArg(`r.io/a:t,platforms=linux/amd64,platforms=linux/arm64`, 2).platforms, [
    { os: 'linux', architecture: 'amd64' },
    { os: 'linux', architecture: 'arm64' },
  ]);
  assert.throws(() => parseSourceArg('r.io/a,arch=x', 3), (e) => isKilnError(e, 'oci.source_invalid') && e.message.includes('source 3'));
});

void test('annotation arguments', () => {
  assert.deepEqual(parseAnnotationArgs(['a=b', 'c=d=e', 'e=']), { a: 'b', c: 'd=e', e: '' });
  assert.throws(() => parseAnnotationArgs(['novalue']), (e) => isKilnError(e, 'oci.annotation_invalid'));
});

void test('a full YAML spec', async () => {
  const s = await parseManifestSpecYaml(
    [
      'target: r.io/org/app',
      'tags: [v1.2.3, "1.2", latest]',
      'index-type: oci',
      'attestations: drop',
      'created: max-child',
      'annotations: {org.opencontainers.image.source: "https://x"}',
      'sources:',
      `  - ref: r.io/org/app-build@${D}`,
      '    platform: linux/arm/v7',
      '    annotations: {note: x}',
      `  - r.io/org/app-build@${D}`,
      '  - ref: r.io/org/multi:latest',
      '    platforms: [linux/amd64, {os: linux, architecture: arm64}]',
      'registry:',
      '  r.io: {plain-http: true, ca: /etc/ca.pem}',
    ].join('\n'),
    'spec.yaml',
  );
  assert.equal(s.target, 'r.io/org/app');
  assert.deepEqual(s.tags, ['v1.2.3', '1.2', 'latest']);
  assert.equal(s.indexType, 'oci');
  assert.equal(s.attestations, 'drop');
  assert.equal(s.sources.length, 3);
  assert.deepEqual(s.sources[0]?.platform, { os: 'linux', architecture: 'arm', variant: 'v7' });
  assert.deepEqual(s.sources[0]?.annotations, { note: 'x' });
  assert.equal(s.sources[2]?.platforms?.length, 2);
  assert.deepEqual(s.registries['r.io'], { plainHttp: true });
  assert.equal(s.caFiles['r.io'], '/etc/ca.pem');
});

void test('every problem in a YAML spec is reported at once', async () => {
  await assert.rejects(
    parseManifestSpecYaml('target: 5\ntags: v1\nindex-type: weird\nextra: 1\nannotations: {a: 1}\nsources:\n  - platform: linux/amd64\n', 'f.yaml'),
    (e) =>
      isKilnError(e, 'oci.spec_invalid') &&
      e.message.includes('6 problem(s)') &&
      ['target must be', 'tags must be', 'index-type must be', 'unknown key "extra"', 'annotations.a must be a string', 'sources[0].ref is missing'].every((p) => e.message.includes(p)),
  );
  await assert.rejects(parseManifestSpecYaml('a: [', 'f.yaml'), (e) => isKilnError(e, 'oci.spec_invalid'));
  await assert.rejects(parseManifestSpecYaml('- x', 'f.yaml'), (e) => isKilnError(e, 'oci.spec_invalid'));
});
