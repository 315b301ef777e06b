import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isKilnError } from '../core/errors.ts';
import {
  ATTESTATION_DIGEST_KEY,
  ATTESTATION_TYPE_KEY,
  CREATED_KEY,
  DEFAULT_COMPOSE_OPTIONS,
  MAX_INDEX_BYTES,
  compose,
  type ComposeOptions,
  type FetchedManifest,
  type ResolvedChild,
  type ResolvedSource,
  type SourceSpec,
} from './compose.ts';
import { sha256Digest } from './digest.ts';
import { MediaType } from './media-types.ts';
import { parsePlatform } from './platform.ts';
import { parseImageRef } from './reference.ts';

const enc = (o: unknown) => new TextEncoder().encode(JSON.stringify(o));
function fetched(json: Record<string, unknown>): FetchedManifest {
  const bytes = enc(json);
  return { digest: sha256Digest(bytes), mediaType: json.mediaType as string, bytes, json };
}
function image(arch: string, opts: { variant?: string; docker?: boolean; created?: string; os?: string } = {}): ResolvedChild {
  const config: Record<string, unknown> = { architecture: arch, os: opts.os ?? 'linux', rootfs: { type: 'layers', diff_ids: [] } };
  if (opts.variant) config.variant = opts.variant;
  if (opts.created) config.created = opts.created;
  const m = fetched({
    schemaVersion: 2,
    mediaType: opts.docker ? MediaType.dockerManifest : MediaType.ociManifest,
    config: { mediaType: opts.docker ? MediaType.dockerConfig : MediaType.ociConfig, digest: sha256Digest(enc(config)), size: enc(config).byteLength },
    layers: [],
  });
  return { manifest: m, config };
}
function attestation(of: ResolvedChild): ResolvedChild {
  const m = fetched({ schemaVersion: 2, mediaType: MediaType.ociManifest, config: { mediaType: MediaType.ociConfig, digest: `sha256:${'0'.repeat(64)}`, size: 2 }, layers: [], annotations: { of: of.manifest.digest } });
  return {
    manifest: m,
    descriptor: {
      mediaType: m.mediaType,
      digest: m.digest,
      size: m.bytes.byteLength,
      platform: { architecture: 'unknown', os: 'unknown' },
      annotations: { [ATTESTATION_TYPE_KEY]: 'attestation-manifest', [ATTESTATION_DIGEST_KEY]: of.manifest.digest },
    },
  };
}
let pos = 0;
function plain(child: ResolvedChild, spec: Partial<SourceSpec> = {}): ResolvedSource {
  pos += 1;
  const ref = `127.0.0.1:5000/build@${child.manifest.digest}`;
  return { position: pos, spec: { ref, ...spec }, ref: parseImageRef(ref), top: child.manifest, children: [child] };
}
function indexSource(children: ResolvedChild[], spec: Partial<SourceSpec> = {}): ResolvedSource {
  pos += 1;
  const withDesc = children.map((c) =>
    c.descriptor ? c : { ...c, descriptor: { mediaType: c.manifest.mediaType, digest: c.manifest.digest, size: c.manifest.bytes.byteLength, platform: { architecture: c.config?.architecture, os: c.config?.os } } },
  );
  const top = fetched({ schemaVersion: 2, mediaType: MediaType.ociIndex, manifests: withDesc.map((c) => c.descriptor) });
  const ref = `127.0.0.1:5000/build@${top.digest}`;
  return { position: pos, spec: { ref, ...spec }, ref: parseImageRef(ref), top, children: withDesc };
}
const opts = (o: Partial<ComposeOptions> = {}): ComposeOptions => ({ ...DEFAULT_COMPOSE_OPTIONS, now: new Date('2025-01-02T03:04:05.678Z'), ...o });
const indexJson = (c: { bytes: Uint8Array }) => JSON.parse(new TextDecoder().decode(c.bytes)) as { mediaType: string; manifests: Record<string, unknown>[]; annotations?: Record<string, string> };

void test('plain OCI manifests become an OCI index in input order with platforms from the configs', () => {
  const a = image('amd64'), b = image('aarch64', { variant: 'v8' });
  const c = compose([plain(a), plain(b)], opts());
  const j = indexJson(c);
  assert.equal(c.mediaType, MediaType.ociIndex);
  assert.deepEqual(j.manifests.map((m) => m.digest), [a.manifest.digest, b.manifest.digest]);
  assert.deepEqual(j.manifests[1]?.platform, { architecture: 'arm64', os: 'linux', variant: 'v8' });
  assert.equal(j.manifests[0]?.size, a.manifest.bytes.byteLength);
  assert.equal(c.digest, sha256Digest(c.bytes));
});

void test('deterministic: same inputs give the same bytes; annotation order does not matter', () => {
  const a = image('amd64'), b = image('arm64');
  const x = compose([plain(a), plain(b)], opts({ annotations: { b: '2', a: '1' } }));
  const y = compose([plain(a), plain(b)], opts({ annotations: { a: '1', b: '2' } }));
  assert.equal(x.digest, y.digest);
  assert.ok(!new TextDecoder().decode(x.bytes).includes(' '));
});

void test('auto picks a Docker list only for all-Docker children without annotations or attestations', () => {
  const a = image('amd64', { docker: true }), b = image('arm64', { docker: true });
  assert.equal(compose([plain(a), plain(b)], opts()).mediaType, MediaType.dockerList);
  assert.equal(compose([plain(a), plain(b)], opts({ annotations: { 'org.opencontainers.image.source': 'x' } })).mediaType, MediaType.ociIndex);
  assert.equal(compose([plain(a), plain(b)], opts({ indexType: 'oci' })).mediaType, MediaType.ociIndex);
  assert.equal(compose([plain(image('amd64')), plain(image('arm64'))], opts({ indexType: 'auto' })).mediaType, MediaType.ociIndex);
});

void test('docker index type refuses annotations and OCI children; mixed families refused unless allowed', () => {
  const a = image('amd64', { docker: true }), b = image('arm64', { docker: true }), o = image('arm64');
  assert.throws(() => compose([plain(a), plain(b)], opts({ indexType: 'docker', annotations: { k: 'v' } })), (e) => isKilnError(e, 'oci.annotations_on_docker_list') && !!e.hint);
  assert.throws(() => compose([plain(a), plain(b)], opts({ indexType: 'docker', created: 'now' })), (e) => isKilnError(e, 'oci.annotations_on_docker_list'));
  assert.throws(() => compose([plain(a), plain(o)], opts()), (e) => isKilnError(e, 'oci.mixed_children') && e.message.includes('source'));
  assert.throws(() => compose([plain(a), plain(o)], opts({ indexType: 'docker', allowMixed: true })), (e) => isKilnError(e, 'oci.index_type_conflict'));
  assert.equal(compose([plain(a), plain(o)], opts({ allowMixed: true })).mediaType, MediaType.ociIndex);
});

void test('provenance-style index sources are unwrapped; attestations kept last with their annotations', () => {
  const a = image('amd64'), b = image('arm64');
  const sa = indexSource([a, attestation(a)]), sb = indexSource([b, attestation(b)]);
  const c = compose([sa, sb], opts());
  const j = indexJson(c);
  assert.equal(c.mediaType, MediaType.ociIndex);
  assert.deepEqual(j.manifests.map((m) => (m.platform as { architecture: string }).architecture), ['amd64', 'arm64', 'unknown', 'unknown']);
  assert.deepEqual((j.manifests[2]?.annotations as Record<string, string>)[ATTESTATION_DIGEST_KEY], a.manifest.digest);
  assert.equal((j.manifests[3]?.annotations as Record<string, string>)[ATTESTATION_TYPE_KEY], 'attestation-manifest');
  const dropped = compose([sa, sb], opts({ attestations: 'drop' }));
  assert.equal(indexJson(dropped).manifests.length, 2);
});

void test('orphan attestations are dropped with a warning; a platforms filter picks from a multi-image index', () => {
  const a = image('amd64'), b = image('arm64');
  const src = indexSource([a, b, attestation(a), attestation(b)], { platforms: [parsePlatform('linux/arm64')] });
  const c = compose([src], opts());
  assert.deepEqual(indexJson(c).manifests.map((m) => m.digest), [b.manifest.digest, c.entries[1]?.digest]);
  assert.equal(c.entries[1]?.describes, b.manifest.digest);
  assert.ok(c.warnings.some((w) => w.includes('dropped attestation')));
  assert.throws(() => compose([indexSource([a], { platforms: [parsePlatform('linux/s390x')] })], opts()), (e) => isKilnError(e, 'oci.platform_not_found') && e.message.includes('s390x'));
});

void test('duplicate platforms rejected naming both sources; the same digest twice listed once', () => {
  const a = image('amd64'), a2 = image('x86_64', { created: '2024-01-01T00:00:00Z' });
  assert.throws(
    () => compose([plain(a), plain(a2)], opts()),
    (e) => isKilnError(e, 'oci.platform_duplicate') && /source \d+ .* and source \d+/.test(e.message),
  );
  const c = compose([plain(a), plain(a)], opts());
  assert.equal(c.entries.length, 1);
  assert.ok(c.warnings.some((w) => w.includes('listed once')));
  assert.equal(compose([plain(a), plain(a2)], opts({ allowDuplicatePlatforms: true })).entries.length, 2);
});

void test('arm64 and arm64/v8 collide; arm/v6 and arm/v7 do not', () => {
  assert.throws(() => compose([plain(image('arm64')), plain(image('arm64', { variant: 'v8' }))], opts()), (e) => isKilnError(e, 'oci.platform_duplicate'));
  assert.equal(compose([plain(image('arm', { variant: 'v6' })), plain(image('arm', { variant: 'v7' }))], opts()).entries.length, 2);
});

void test('platform override: fills variant, may not contradict the config unless forced', () => {
  const a = image('arm');
  const c = compose([plain(a, { platform: parsePlatform('linux/arm/v7') })], opts());
  assert.deepEqual(indexJson(c).manifests[0]?.platform, { architecture: 'arm', os: 'linux', variant: 'v7' });
  assert.throws(() => compose([plain(image('amd64'), { platform: parsePlatform('linux/arm64') })], opts()), (e) => isKilnError(e, 'oci.platform_contradicts_config') && e.message.includes('linux/amd64'));
  assert.equal(compose([plain(image('amd64'), { platform: parsePlatform('linux/arm64') })], opts({ forcePlatform: true })).entries[0]?.platform.architecture, 'arm64');
  const noPlat = image('amd64');
  delete noPlat.config?.architecture;
  assert.throws(() => compose([plain(noPlat)], opts()), (e) => isKilnError(e, 'oci.platform_missing') && (e.hint ?? '').includes('platform='));
  assert.equal(compose([plain(noPlat, { platform: parsePlatform('linux/amd64') })], opts()).entries[0]?.platform.architecture, 'amd64');
});

void test('arm without variant warns', () => {
  assert.ok(compose([plain(image('arm'))], opts()).warnings.some((w) => w.includes('without a variant')));
});

void test('created: none, now, max-child ignoring placeholders, source-date-epoch, literal, invalid', () => {
  const a = image('amd64', { created: '1970-01-01T00:00:00Z' }), b = image('arm64', { created: '2024-05-01T10:00:00Z' }), z = image('386', { created: '0001-01-01T00:00:00Z' });
  const created = (o: Partial<ComposeOptions>) => indexJson(compose([plain(a), plain(b), plain(z)], opts(o))).annotations?.[CREATED_KEY];
  assert.equal(created({}), undefined);
  assert.equal(created({ created: 'now' }), '2025-01-02T03:04:05Z');
  assert.equal(created({ created: 'max-child' }), '2024-05-01T10:00:00Z');
  assert.equal(created({ created: 'source-date-epoch', sourceDateEpoch: '0' }), '1970-01-01T00:00:00Z');
  assert.equal(created({ created: '2023-02-03T04:05:06+02:00' }), '2023-02-03T04:05:06+02:00');
  assert.throws(() => created({ created: 'yesterday' }), (e) => isKilnError(e, 'oci.created_invalid'));
  assert.throws(() => created({ created: '2023-13-01T00:00:00Z' }), (e) => isKilnError(e, 'oci.created_invalid'));
  assert.throws(() => created({ created: 'source-date-epoch' }), (e) => isKilnError(e, 'oci.created_invalid'));
  const only = compose([plain(a), plain(z)], opts({ created: 'max-child' }));
  assert.equal(indexJson(only).annotations, undefined);
  assert.ok(only.warnings.some((w) => w.includes('max-child')));
  assert.throws(() => compose([plain(a)], opts({ annotations: { [CREATED_KEY]: 'nope' } })), (e) => isKilnError(e, 'oci.created_invalid'));
});

void test('annotations: reserved unknown keys warn; descriptor annotations force OCI', () => {
  const c = compose([plain(image('amd64'))], opts({ annotations: { 'org.opencontainers.image.colour': 'red' } }));
  assert.ok(c.warnings.some((w) => w.includes('colour')));
  const d = compose([plain(image('amd64', { docker: true }), { annotations: { note: 'x' } })], opts());
  assert.equal(d.mediaType, MediaType.ociIndex);
  assert.deepEqual(indexJson(d).manifests[0]?.annotations, { note: 'x' });
});

void test('the 4 MiB limit is enforced before anything is pushed', () => {
  const big = 'x'.repeat(MAX_INDEX_BYTES);
  assert.throws(() => compose([plain(image('amd64'))], opts({ annotations: { pad: big } })), (e) => isKilnError(e, 'oci.index_too_large'));
  const justUnder = compose([plain(image('amd64'))], opts({ annotations: { pad: 'x'.repeat(1000) } }));
  assert.ok(justUnder.size < MAX_INDEX_BYTES);
});

void test('schema1, nested indexes and non-images are refused with the source named', () => {
  const s1 = fetched({ schemaVersion: 1, mediaType: MediaType.dockerSchema1Signed });
  assert.throws(() => compose([{ position: 1, spec: { ref: 'r' }, ref: parseImageRef('x.io/a'), top: s1, children: [{ manifest: s1 }] }], opts()), (e) => isKilnError(e, 'oci.source_unsupported') && e.message.includes('source 1 (r)'));
  const inner = fetched({ schemaVersion: 2, mediaType: MediaType.ociIndex, manifests: [] });
  const outer = fetched({ schemaVersion: 2, mediaType: MediaType.ociIndex, manifests: [] });
  assert.throws(() => compose([{ position: 1, spec: { ref: 'r' }, ref: parseImageRef('x.io/a'), top: outer, children: [{ manifest: inner }] }], opts()), (e) => isKilnError(e, 'oci.source_unsupported') && e.message.includes('nested'));
  const att = attestation(image('amd64'));
  assert.throws(() => compose([indexSource([att])], opts()), (e) => isKilnError(e, 'oci.source_unsupported') && e.message.includes('no runnable image'));
  assert.throws(() => compose([], opts()), (e) => isKilnError(e, 'oci.no_sources'));
});
