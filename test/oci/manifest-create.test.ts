/**
 * `kiln manifest create` end to end against real docker-registry instances, with images built by buildah
 * and every result checked by skopeo (inspect --raw, --override-arch/variant, copy --all).
 */
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { isKilnError } from '../../src/core/errors.ts';
import { makeDockerConfigCredentials } from '../../src/oci/auth.ts';
import { DEFAULT_COMPOSE_OPTIONS, type ComposeOptions, type SourceSpec } from '../../src/oci/compose.ts';
import { createManifest, type ManifestCreateRequest } from '../../src/oci/manifest-create.ts';
import { MediaType } from '../../src/oci/media-types.ts';
import { RegistryClient } from '../../src/oci/registry-client.ts';
import { runKiln } from './cli.ts';
import { Harness, pushLayoutIndex, rawPushBlob, rawPutManifest, skopeo, skopeoConfigFor, skopeoDigestFor, skopeoRaw, writeProvenanceIndex, type Registry } from './harness.ts';

const h = new Harness();
let reg: Registry; // the target registry; sources live in other repositories on it
let other: Registry; // another registry, for cross-registry sources
let home: string;
const img: Record<string, string> = {}; // platform label -> source reference (by digest)
const dig: Record<string, string> = {};

function client(extra: Partial<ConstructorParameters<typeof RegistryClient>[0]> = {}): RegistryClient {
  return new RegistryClient({ credentials: makeDockerConfigCredentials({ configFile: join(home, 'none.json') }), retry: { attempts: 2, baseMs: 10, maxMs: 20 }, ...extra });
}

function request(target: string, sources: SourceSpec[], o: Partial<ManifestCreateRequest> & { opts?: Partial<ComposeOptions> } = {}): ManifestCreateRequest {
  return { target, tags: ['v1'], sources, compose: { ...DEFAULT_COMPOSE_OPTIONS, ...(o.opts ?? {}) }, dryRun: false, allowCrossRegistry: false, ...o };
}

async function create(req: ManifestCreateRequest, c = client()) {
  try {
    return await createManifest(req, { client: c, now: () => new Date('2025-06-01T00:00:00Z') });
  } finally {
    await c.close();
  }
}

async function tagExists(ref: string): Promise<boolean> {
  try {
    await skopeoRaw(ref);
    return true;
  } catch {
    return false;
  }
}

void describe('kiln manifest create against real registries', () => {
  before(async () => {
    home = await h.tempDir('kiln-home-');
    [reg, other] = await Promise.all([h.startRegistry({ allowForeignUrls: true }), h.startRegistry()]);
    const builds: [string, { arch: string; variant?: string; timestamp?: number }, 'oci' | 'v2s2'][] = [
      ['amd64', { arch: 'amd64', timestamp: 1700000000 }, 'oci'],
      ['arm64', { arch: 'arm64', variant: 'v8', timestamp: 1710000000 }, 'oci'],
      ['armv7', { arch: 'arm', variant: 'v7', timestamp: 0 }, 'oci'],
      ['ppc64le', { arch: 'ppc64le' }, 'oci'],
      ['amd64-docker', { arch: 'amd64' }, 'v2s2'],
      ['arm64-docker', { arch: 'arm64', variant: 'v8' }, 'v2s2'],
      ['amd64-bis', { arch: 'amd64' }, 'oci'],
    ];
    for (const [label, b, format] of builds) {
      const name = await h.buildImage(b);
      dig[label] = await h.buildahPush(name, `docker://${reg.host}/ci/build-${label}:tmp`, format);
      img[label] = `${reg.host}/ci/build-${label}@${dig[label]}`;
    }
  });
  after(async () => {
    await h.cleanup();
    assert.deepEqual(h.livePids(), [], 'every registry process stopped');
  });

  void test('per-arch sources in other repositories, pushed by digest: index pushed, every tag and platform checks out', async () => {
    const target = `${reg.host}/app/multi`;
    const r = await runKiln(['manifest', 'create', target, '--tag', 'v1', '--tag', 'latest', '--metadata-file', join(home, 'meta.json'), img.amd64!, img.arm64!, img.armv7!], { HOME: home });
    assert.equal(r.code, 0, r.stderr);
    const digest = r.stdout.split('\n')[0];
    assert.match(digest ?? '', /^sha256:[a-f0-9]{64}$/);
    for (const tag of ['v1', 'latest']) {
      const raw = await skopeoRaw(`${target}:${tag}`);
      assert.equal(raw.digest, digest, `skopeo reads ${tag} as the printed digest`);
      assert.equal(raw.json.mediaType, MediaType.ociIndex);
    }
    assert.equal(await skopeoDigestFor(`${target}:v1`, { os: 'linux', arch: 'amd64' }), dig.amd64);
    assert.equal(await skopeoDigestFor(`${target}:v1`, { os: 'linux', arch: 'arm64', variant: 'v8' }), dig.arm64);
    assert.equal(await skopeoDigestFor(`${target}:v1`, { os: 'linux', arch: 'arm', variant: 'v7' }), dig.armv7);
    assert.equal((await skopeoConfigFor(`${target}:v1`, { os: 'linux', arch: 'arm', variant: 'v7' })).architecture, 'arm');
    await assert.rejects(skopeoDigestFor(`${target}:v1`, { os: 'linux', arch: 's390x' }), 'no s390x image in the index');
    // copy --all pulls every child and blob from the target repository alone.
    const layout = await h.tempDir('kiln-copy-');
    await skopeo(['copy', '-q', '--all', '--src-tls-verify=false', `docker://${target}:v1`, `oci:${layout}:x`]);
    const copied = JSON.parse(await readFile(join(layout, 'index.json'), 'utf8')) as { manifests: { digest: string }[] };
    assert.equal(copied.manifests[0]?.digest, digest);
    const meta = JSON.parse(await readFile(join(home, 'meta.json'), 'utf8')) as Record<string, unknown>;
    assert.equal(meta.digest, digest);
    assert.deepEqual(meta.tags, ['v1', 'latest']);
    assert.deepEqual(meta.platforms, ['linux/amd64', 'linux/arm64/v8', 'linux/arm/v7']);
    assert.match(r.stderr, /read back and matched/);

    // Idempotent: the same inputs give the same digest; children are found in place.
    const again = await create(request(target, [{ ref: img.amd64! }, { ref: img.arm64! }, { ref: img.armv7! }], { tags: ['v1'] }));
    assert.equal(again.digest, digest);
    assert.equal(again.report?.children.pushed, 0);
    assert.equal(again.report?.children.present, 3);
  });

  void test('cross-repository blobs are mounted, not re-uploaded', async () => {
    const r = await create(request(`${reg.host}/app/mounted`, [{ ref: img.amd64! }, { ref: img.ppc64le! }]));
    assert.ok((r.report?.blobs.mounted ?? 0) >= 4, `mounted ${JSON.stringify(r.report)}`);
    assert.equal(r.report?.blobs.streamed, 0);
    assert.equal((await skopeoRaw(`${reg.host}/app/mounted:v1`)).digest, r.digest);
  });

  void test('bare digests name images in the target repository', async () => {
    const target = `${reg.host}/ci/build-amd64`;
    const r = await create(request(target, [{ ref: dig.amd64! }]));
    assert.equal((await skopeoRaw(`${target}:v1`)).digest, r.digest);
  });

  void test('provenance-style index sources are unwrapped, attestations kept last with their references', async () => {
    const a = await writeProvenanceIndex(h, await h.buildImage({ arch: 'amd64' }), { os: 'linux', architecture: 'amd64' });
    const b = await writeProvenanceIndex(h, await h.buildImage({ arch: 'arm64' }), { os: 'linux', architecture: 'arm64' });
    const ia = await pushLayoutIndex(h, a.layout, `${reg.host}/ci/prov-amd64:build`);
    const ib = await pushLayoutIndex(h, b.layout, `${reg.host}/ci/prov-arm64:build`);
    const target = `${reg.host}/app/prov`;
    const r = await runKiln(['manifest', 'create', target, '-t', 'v1', `${reg.host}/ci/prov-amd64@${ia}`, `${reg.host}/ci/prov-arm64@${ib}`], { HOME: home });
    assert.equal(r.code, 0, r.stderr);
    const raw = await skopeoRaw(`${target}:v1`);
    assert.equal(raw.digest, r.stdout.split('\n')[0]);
    const ms = raw.json.manifests as { digest: string; platform: { architecture: string }; annotations?: Record<string, string> }[];
    assert.deepEqual(ms.map((m) => m.digest), [a.imageDigest, b.imageDigest, a.attestationDigest, b.attestationDigest]);
    assert.deepEqual(ms[2]?.annotations, { 'vnd.docker.reference.digest': a.imageDigest, 'vnd.docker.reference.type': 'attestation-manifest' });
    assert.equal(ms[3]?.platform.architecture, 'unknown');
    assert.equal(await skopeoDigestFor(`${target}:v1`, { os: 'linux', arch: 'arm64' }), b.imageDigest);
    const layout = await h.tempDir('kiln-copy-');
    await skopeo(['copy', '-q', '--all', '--src-tls-verify=false', `docker://${target}:v1`, `oci:${layout}:x`]);

    const dropped = await create(request(`${reg.host}/app/prov-noatt`, [{ ref: `${reg.host}/ci/prov-amd64@${ia}` }, { ref: `${reg.host}/ci/prov-arm64@${ib}` }], { opts: { attestations: 'drop' } }));
    const rawDropped = await skopeoRaw(`${reg.host}/app/prov-noatt:v1`);
    assert.equal(rawDropped.digest, dropped.digest);
    assert.equal((rawDropped.json.manifests as unknown[]).length, 2);
  });

  void test('BuildKit 0.32-style attestations (OCI artifact with subject) get the referrers tag distribution lacks an API for', async () => {
    const a = await writeProvenanceIndex(h, await h.buildImage({ arch: 's390x' }), { os: 'linux', architecture: 's390x' }, { artifact: true });
    const ia = await pushLayoutIndex(h, a.layout, `${reg.host}/ci/prov-artifact:build`);
    const target = `${reg.host}/app/prov-artifact`;
    const r = await create(request(target, [{ ref: `${reg.host}/ci/prov-artifact@${ia}` }]));
    const raw = await skopeoRaw(`${target}:v1`);
    assert.equal(raw.digest, r.digest);
    const ms = raw.json.manifests as { digest: string; artifactType?: string }[];
    assert.deepEqual(ms.map((m) => m.digest), [a.imageDigest, a.attestationDigest]);
    assert.equal(ms[1]?.artifactType, 'application/vnd.docker.attestation.manifest.v1+json');
    const referrers = await skopeoRaw(`${target}:${a.imageDigest.replace(':', '-')}`);
    assert.equal(referrers.json.mediaType, MediaType.ociIndex);
    assert.deepEqual((referrers.json.manifests as { digest: string; artifactType: string }[]).map((m) => [m.digest, m.artifactType]), [[a.attestationDigest, 'application/vnd.docker.attestation.manifest.v1+json']]);
    // Re-running does not duplicate the referrer.
    await create(request(`${reg.host}/app/prov-artifact`, [{ ref: `${reg.host}/ci/prov-artifact@${ia}` }]));
    assert.equal(((await skopeoRaw(`${target}:${a.imageDigest.replace(':', '-')}`)).json.manifests as unknown[]).length, 1);
  });

  void test('sources on another registry are streamed in chunks with --allow-cross-registry, refused without it', async () => {
    const big = await h.buildImage({ arch: 'riscv64', bytes: 300 * 1024 });
    const bigDigest = await h.buildahPush(big, `docker://${other.host}/elsewhere/riscv:tmp`, 'oci');
    const srcRef = `${other.host}/elsewhere/riscv@${bigDigest}`;
    const target = `${reg.host}/app/cross`;
    const refused = await runKiln(['manifest', 'create', target, '-t', 'v1', img.amd64!, srcRef], { HOME: home });
    assert.notEqual(refused.code, 0);
    assert.match(refused.stderr, /source 2 .* is on 127\.0\.0\.1:\d+, but the target is on/);
    assert.match(refused.stderr, /how to fix: pass --allow-cross-registry/);
    const c = client({ chunkSize: 64 * 1024 });
    const r = await create(request(target, [{ ref: img.amd64! }, { ref: srcRef }], { allowCrossRegistry: true }), c);
    assert.ok((r.report?.blobs.streamed ?? 0) >= 2, JSON.stringify(r.report));
    assert.ok(c.stats.chunksUploaded >= 4, `the 300 KiB layer went up in 64 KiB chunks (${c.stats.chunksUploaded})`);
    assert.equal((await skopeoRaw(`${target}:v1`)).digest, r.digest);
    assert.equal(await skopeoDigestFor(`${target}:v1`, { os: 'linux', arch: 'riscv64' }), bigDigest);
    const layout = await h.tempDir('kiln-copy-');
    await skopeo(['copy', '-q', '--all', '--src-tls-verify=false', `docker://${target}:v1`, `oci:${layout}:x`]);
  });

  void test('foreign (non-distributable) layers are not copied; the child manifest still goes in', async () => {
    const repo = 'ci/windowsish';
    const config = await rawPushBlob(reg.host, repo, Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'windows', 'os.version': '10.0.17763.1', rootfs: { type: 'layers', diff_ids: [] } })));
    const normal = await rawPushBlob(reg.host, repo, Buffer.from('a distributable layer'));
    const foreignDigest = `sha256:${'f'.repeat(64)}`; // never uploaded anywhere
    const childDigest = await rawPutManifest(
      reg.host,
      repo,
      'v1',
      {
        schemaVersion: 2,
        mediaType: MediaType.dockerManifest,
        config: { mediaType: MediaType.dockerConfig, ...config },
        layers: [
          { mediaType: 'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip', size: 1234, digest: foreignDigest, urls: ['https://example.invalid/base.tar.gz'] },
          { mediaType: 'application/vnd.docker.image.rootfs.diff.tar.gzip', ...normal },
        ],
      },
      MediaType.dockerManifest,
    );
    const target = `${reg.host}/app/windowsish`;
    const r = await create(request(target, [{ ref: `${reg.host}/${repo}@${childDigest}` }]));
    assert.equal(r.report?.blobs.skippedForeign, 1);
    assert.deepEqual(r.platforms, ['windows/amd64:10.0.17763.1']);
    const raw = await skopeoRaw(`${target}:v1`);
    assert.equal(raw.digest, r.digest);
    assert.equal(raw.json.mediaType, MediaType.dockerList);
    assert.deepEqual((raw.json.manifests as { platform: unknown }[])[0]?.platform, { architecture: 'amd64', os: 'windows', 'os.version': '10.0.17763.1' });
    assert.equal((await skopeoRaw(`${target}@${childDigest}`)).digest, childDigest);
  });

  void test('duplicate platforms are rejected naming both sources; nothing is pushed', async () => {
    const target = `${reg.host}/app/dup`;
    const r = await runKiln(['manifest', 'create', target, '-t', 'v1', img.amd64!, img['amd64-bis']!], { HOME: home });
    assert.equal(r.code, 1);
    assert.equal(r.stdout, '');
    assert.match(r.stderr, /source 2 \(.*\) and source 1 \(.*\) are both linux\/amd64/);
    assert.match(r.stderr, /\[oci\.platform_duplicate\]/);
    assert.match(r.stderr, /how to fix:/);
    assert.equal(await tagExists(`${target}:v1`), false);
  });

  void test('Docker vs OCI typing: auto gives a Docker list for Docker children, annotations force OCI, docker refuses OCI children and annotations, mixed refused', async () => {
    const docker = await create(request(`${reg.host}/app/dlist`, [{ ref: img['amd64-docker']! }, { ref: img['arm64-docker']! }]));
    const raw = await skopeoRaw(`${reg.host}/app/dlist:v1`);
    assert.equal(raw.digest, docker.digest);
    assert.equal(raw.json.mediaType, MediaType.dockerList);
    assert.equal(await skopeoDigestFor(`${reg.host}/app/dlist:v1`, { os: 'linux', arch: 'arm64', variant: 'v8' }), dig['arm64-docker']);

    const annotated = await create(request(`${reg.host}/app/dlist-ann`, [{ ref: img['amd64-docker']! }, { ref: img['arm64-docker']! }], { opts: { annotations: { 'org.opencontainers.image.source': 'https://example.invalid/repo' } } }));
    const rawAnn = await skopeoRaw(`${reg.host}/app/dlist-ann:v1`);
    assert.equal(rawAnn.digest, annotated.digest);
    assert.equal(rawAnn.json.mediaType, MediaType.ociIndex);
    assert.deepEqual(rawAnn.json.annotations, { 'org.opencontainers.image.source': 'https://example.invalid/repo' });

    const ociAsked = await runKiln(['manifest', 'create', `${reg.host}/app/dforce`, '-t', 'v1', '--index-type', 'oci', img['amd64-docker']!], { HOME: home });
    assert.equal(ociAsked.code, 0, ociAsked.stderr);
    assert.equal((await skopeoRaw(`${reg.host}/app/dforce:v1`)).json.mediaType, MediaType.ociIndex);

    const r1 = await runKiln(['manifest', 'create', `${reg.host}/app/dbad`, '-t', 'v1', '--index-type', 'docker', img.amd64!], { HOME: home });
    assert.equal(r1.code, 1);
    assert.match(r1.stderr, /source 1 .* is OCI-typed/);
    const r2 = await runKiln(['manifest', 'create', `${reg.host}/app/dbad`, '-t', 'v1', '--index-type', 'docker', '--annotation', 'a=b', img['amd64-docker']!], { HOME: home });
    assert.match(r2.stderr, /\[oci\.annotations_on_docker_list\]/);
    const r3 = await runKiln(['manifest', 'create', `${reg.host}/app/dbad`, '-t', 'v1', img['amd64-docker']!, img.arm64!], { HOME: home });
    assert.match(r3.stderr, /\[oci\.mixed_children\]/);
    assert.equal(await tagExists(`${reg.host}/app/dbad:v1`), false);
  });

  void test('annotations and created: max-child skips the 1970 placeholder; an RFC 3339 literal is kept', async () => {
    const r = await create(request(`${reg.host}/app/ann`, [{ ref: img.amd64! }, { ref: img.arm64! }, { ref: img.armv7! }], { opts: { created: 'max-child', annotations: { 'org.opencontainers.image.version': '1.2.3' } } }));
    const raw = await skopeoRaw(`${reg.host}/app/ann:v1`);
    assert.equal(raw.digest, r.digest);
    assert.deepEqual(raw.json.annotations, { 'org.opencontainers.image.created': '2024-03-09T16:00:00Z', 'org.opencontainers.image.version': '1.2.3' });
    const bad = await runKiln(['manifest', 'create', `${reg.host}/app/ann2`, '-t', 'v1', '--created', '2024-02-30 bogus', img.amd64!], { HOME: home });
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /\[oci\.created_invalid\]/);
  });

  void test('an index over 4 MiB is refused before anything is pushed', async () => {
    const target = `${reg.host}/app/huge`;
    await assert.rejects(create(request(target, [{ ref: img.amd64! }], { opts: { annotations: { pad: 'x'.repeat(4 * 1024 * 1024) } } })), (e) => isKilnError(e, 'oci.index_too_large'));
    assert.equal(await tagExists(`${target}:v1`), false);
    await assert.rejects(skopeoRaw(`${target}@${dig.amd64}`), 'not even the child was pushed');
  });

  void test('YAML file input with per-source platform override, --dry-run prints digest then the index and pushes nothing', async () => {
    const file = join(home, 'spec.yaml');
    await writeFile(
      file,
      [
        `target: ${reg.host}/app/from-file`,
        'tags: [v2, latest]',
        'index-type: oci',
        'annotations:',
        '  org.opencontainers.image.source: https://example.invalid/app',
        'sources:',
        `  - ref: ${img.amd64}`,
        `  - ref: ${img.armv7}`,
        '    platform: linux/armhf',
        '',
      ].join('\n'),
    );
    const dry = await runKiln(['manifest', 'create', '-f', file, '--dry-run'], { HOME: home });
    assert.equal(dry.code, 0, dry.stderr);
    const [digest, json] = dry.stdout.split('\n');
    const idx = JSON.parse(json ?? '') as { manifests: { platform: Record<string, string> }[] };
    assert.deepEqual(idx.manifests[1]?.platform, { architecture: 'arm', os: 'linux', variant: 'v7' });
    assert.equal(await tagExists(`${reg.host}/app/from-file:v2`), false);
    const real = await runKiln(['manifest', 'create', '-f', file], { HOME: home });
    assert.equal(real.code, 0, real.stderr);
    assert.equal(real.stdout.split('\n')[0], digest, 'dry run and real run agree on the digest');
    assert.equal((await skopeoRaw(`${reg.host}/app/from-file:latest`)).digest, digest);

    const contradict = await runKiln(['manifest', 'create', `${reg.host}/app/x`, '-t', 'v1', `${img.amd64},platform=linux/arm64`], { HOME: home });
    assert.equal(contradict.code, 1);
    assert.match(contradict.stderr, /source 1 .* contradicts the image config, which says linux\/amd64/);
    const badFile = join(home, 'bad.yaml');
    await writeFile(badFile, 'target: 5\ntags: v1\nindex-type: weird\nsources:\n  - platform: linux/amd64\n');
    const bad = await runKiln(['manifest', 'create', '-f', badFile], { HOME: home });
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /4 problem\(s\)/);
  });

  void test('missing sources and tagged targets fail with the source named and a fix', async () => {
    const missing = `${reg.host}/ci/build-amd64@sha256:${'0'.repeat(64)}`;
    const r = await runKiln(['manifest', 'create', `${reg.host}/app/missing`, '-t', 'v1', img.amd64!, missing], { HOME: home });
    assert.equal(r.code, 1);
    assert.match(r.stderr, /source 2 \(.*0{64}\) .* was not found/);
    assert.match(r.stderr, /how to fix: check the digest/);
    const t = await runKiln(['manifest', 'create', `${reg.host}/app/x:v1`, img.amd64!], { HOME: home });
    assert.match(t.stderr, /\[oci\.target_invalid\]/);
    const noTag = await runKiln(['manifest', 'create', `${reg.host}/app/x`, img.amd64!], { HOME: home });
    assert.match(noTag.stderr, /\[oci\.no_tags\]/);
  });
});
