/**
 * Writes a composition into the target repository in the order registries require: every child's blobs
 * (mounted across repositories, streamed when the mount is refused or the source is another registry), each
 * child manifest by digest with its exact bytes, then the index by digest, then each tag, then reads every
 * tag back and compares digests.
 */
import { KilnError, toKilnError } from '../core/errors.ts';
import { isRetryable } from '../core/error-catalogue.ts';
import { describeSource, type ComposedEntry, type Composition } from './compose.ts';
import { mapLimit } from './limit.ts';
import { MediaType, isNonDistributableLayer } from './media-types.ts';
import type { ImageRef } from './reference.ts';
import type { RegistryClient } from './registry-client.ts';

export type PushEvent =
  | { kind: 'blob'; digest: string; how: 'present' | 'mounted' | 'streamed' | 'skipped-foreign' }
  | { kind: 'child'; digest: string; how: 'present' | 'pushed' }
  | { kind: 'referrers'; subject: string; tag: string }
  | { kind: 'index'; digest: string }
  | { kind: 'tag'; tag: string }
  | { kind: 'verified'; tag: string };

export interface PushReport {
  blobs: { present: number; mounted: number; streamed: number; skippedForeign: number };
  children: { present: number; pushed: number };
}

export interface PushOptions {
  concurrency?: number;
  /** The caller already checked the target accepts pushes (createManifest does it while resolving). */
  probed?: boolean;
  onEvent?: (e: PushEvent) => void;
}

interface BlobDescriptor {
  digest: string;
  mediaType?: string;
  size?: number;
}

function blobsOf(manifest: Record<string, unknown>): BlobDescriptor[] {
  const out: BlobDescriptor[] = [];
  const config = manifest.config as BlobDescriptor | undefined;
  if (config && typeof config.digest === 'string') out.push(config);
  const layers = Array.isArray(manifest.layers) ? (manifest.layers as BlobDescriptor[]) : [];
  for (const l of layers) if (typeof l.digest === 'string') out.push(l);
  return out;
}

export async function pushComposition(client: RegistryClient, comp: Composition, target: ImageRef, tags: string[], opts: PushOptions = {}): Promise<PushReport> {
  const emit = opts.onEvent ?? (() => undefined);
  const report: PushReport = { blobs: { present: 0, mounted: 0, streamed: 0, skippedForeign: 0 }, children: { present: 0, pushed: 0 } };
  const inflight = new Map<string, Promise<void>>();
  const concurrency = opts.concurrency ?? 4;

  const copyBlob = (entry: ComposedEntry, blob: BlobDescriptor): Promise<void> => {
    let p = inflight.get(blob.digest);
    if (p) return p;
    p = (async () => {
      if (isNonDistributableLayer(blob.mediaType)) {
        report.blobs.skippedForeign++;
        emit({ kind: 'blob', digest: blob.digest, how: 'skipped-foreign' });
        return;
      }
      const src = entry.source.ref;
      // Same registry: mount straight away (201 also when the target already has the blob), one round trip.
      // Another registry: look first, so a blob already there is not uploaded again.
      if (src.registry !== target.registry && (await client.hasBlob(target.registry, target.repository, blob.digest, [`repository:${target.repository}:pull,push`]))) {
        report.blobs.present++;
        emit({ kind: 'blob', digest: blob.digest, how: 'present' });
        return;
      }
      let location: string;
      if (src.registry === target.registry) {
        const m = await client.mountBlob(target.registry, target.repository, blob.digest, src.repository);
        if (m.mounted) {
          report.blobs.mounted++;
          emit({ kind: 'blob', digest: blob.digest, how: 'mounted' });
          return;
        }
        location = m.location;
      } else {
        location = await client.startUpload(target.registry, target.repository);
      }
      for (let attempt = 1; ; attempt++) {
        try {
          const { body } = await client.openBlob(src.registry, src.repository, blob.digest);
          await client.uploadBlob(target.registry, target.repository, blob.digest, location, body);
          break;
        } catch (e) {
          const k = toKilnError(e);
          if (!isRetryable(k) || attempt >= 3) throw k;
          location = await client.startUpload(target.registry, target.repository);
        }
      }
      report.blobs.streamed++;
      emit({ kind: 'blob', digest: blob.digest, how: 'streamed' });
    })();
    inflight.set(blob.digest, p);
    return p;
  };

  const pushChild = async (entry: ComposedEntry): Promise<void> => {
    const have = await client.headManifest(target.registry, target.repository, entry.digest, [`repository:${target.repository}:pull,push`]);
    if (have && (have.digest === undefined || have.digest === entry.digest)) {
      report.children.present++;
      emit({ kind: 'child', digest: entry.digest, how: 'present' });
      return;
    }
    await Promise.all(blobsOf(entry.manifest.json).map((b) => copyBlob(entry, b)));
    const put = await client.putManifest(target.registry, target.repository, entry.digest, entry.manifest.bytes, entry.manifest.mediaType);
    report.children.pushed++;
    emit({ kind: 'child', digest: entry.digest, how: 'pushed' });
    const subject = entry.manifest.json.subject as { digest?: unknown } | undefined;
    if (typeof subject?.digest === 'string' && !put.subject) await updateReferrersTag(client, target, subject.digest, entry, emit);
  };

  if (!opts.probed) await client.probePush(target.registry, target.repository);
  // Errors name the source the child came from, and how its blobs got (or failed to get) there.
  const pushNamed = async (entry: ComposedEntry): Promise<void> => {
    try {
      await pushChild(entry);
    } catch (e) {
      const k = toKilnError(e);
      const what = `${describeSource(entry.source)}: copying ${entry.role} ${entry.digest} into ${target.registry}/${target.repository}`;
      throw new KilnError(k.code, `${what}: ${k.message}`, {
        ...(k.hint ? { hint: k.hint } : {}),
        kind: k.kind,
        cause: k,
        details: { ...(k.details ?? {}), blobs: { ...report.blobs } },
      });
    }
  };
  const images = comp.entries.filter((e) => e.role === 'image');
  const attestations = comp.entries.filter((e) => e.role === 'attestation');
  // Images first: attestations with a subject point at them.
  await mapLimit(images, concurrency, pushNamed);
  await mapLimit(attestations, concurrency, pushNamed);

  await client.putManifest(target.registry, target.repository, comp.digest, comp.bytes, comp.mediaType);
  emit({ kind: 'index', digest: comp.digest });
  for (const tag of tags) {
    await client.putManifest(target.registry, target.repository, tag, comp.bytes, comp.mediaType);
    emit({ kind: 'tag', tag });
  }
  for (const tag of tags) {
    const back = await client.getManifest(target.registry, target.repository, tag);
    if (back.digest !== comp.digest) {
      throw new KilnError('oci.verify_failed', `${target.registry}/${target.repository}:${tag} reads back as ${back.digest}, not the pushed ${comp.digest}`, {
        hint: 'another push moved the tag at the same time, or the registry rewrote the index; re-run once the other push is done',
      });
    }
    emit({ kind: 'verified', tag });
  }
  return report;
}

/**
 * The referrers tag schema fallback (distribution-spec): a registry without the referrers API does not
 * answer OCI-Subject, so the client keeps an index under tag `sha256-<subject hex>` listing the referrers.
 */
async function updateReferrersTag(client: RegistryClient, target: ImageRef, subject: string, entry: ComposedEntry, emit: (e: PushEvent) => void): Promise<void> {
  const tag = subject.replace(':', '-');
  let manifests: Record<string, unknown>[] = [];
  const existing = await client.headManifest(target.registry, target.repository, tag, [`repository:${target.repository}:pull,push`]);
  if (existing) {
    const cur = await client.getManifest(target.registry, target.repository, tag);
    if (Array.isArray(cur.json.manifests)) manifests = cur.json.manifests as Record<string, unknown>[];
  }
  if (manifests.some((m) => m.digest === entry.digest)) return;
  const d: Record<string, unknown> = { mediaType: entry.manifest.mediaType, digest: entry.digest, size: entry.size };
  const at = entry.manifest.json.artifactType;
  if (typeof at === 'string') d.artifactType = at;
  const ann = entry.manifest.json.annotations;
  if (ann && typeof ann === 'object') d.annotations = ann;
  manifests.push(d);
  const bytes = new TextEncoder().encode(JSON.stringify({ schemaVersion: 2, mediaType: MediaType.ociIndex, manifests }));
  await client.putManifest(target.registry, target.repository, tag, bytes, MediaType.ociIndex);
  emit({ kind: 'referrers', subject, tag });
}
