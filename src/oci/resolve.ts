/** Resolves sources: fetches each source's manifest or index, its children and their image configs. */
import { KilnError, toKilnError } from '../core/errors.ts';
import { classifyChild, describeSource, type AttestationMode, type FetchedManifest, type ResolvedChild, type ResolvedSource, type SourceSpec } from './compose.ts';
import { isDigest } from './digest.ts';
import { mapLimit } from './limit.ts';
import { isIndexType } from './media-types.ts';
import { platformFromDescriptor, platformKey } from './platform.ts';
import { formatRef, parseImageRef, type ImageRef } from './reference.ts';
import type { RegistryClient } from './registry-client.ts';

export interface ResolveOptions {
  target: ImageRef;
  attestations: AttestationMode;
  allowCrossRegistry: boolean;
  concurrency?: number;
}

/** A source ref: a full image reference, or a bare digest meaning "in the target repository". */
export function sourceRef(spec: SourceSpec, position: number, target: ImageRef): ImageRef {
  if (isDigest(spec.ref)) return { registry: target.registry, repository: target.repository, digest: spec.ref };
  return parseImageRef(spec.ref, `source ${position}`);
}

/** Checks every source reference before any network traffic: syntax and registry host. */
export function checkSourceRefs(specs: SourceSpec[], opts: Pick<ResolveOptions, 'target' | 'allowCrossRegistry'>): ImageRef[] {
  return specs.map((spec, i) => {
    const ref = sourceRef(spec, i + 1, opts.target);
    if (ref.registry !== opts.target.registry && !opts.allowCrossRegistry) {
      throw new KilnError('oci.cross_registry', `source ${i + 1} (${spec.ref}) is on ${ref.registry}, but the target is on ${opts.target.registry}`, {
        hint: 'pass --allow-cross-registry to copy its blobs across registries (they are streamed, not mounted)',
      });
    }
    return ref;
  });
}

function wrap(e: unknown, what: string): KilnError {
  const k = toKilnError(e);
  if (k.code === 'oci.not_found') {
    return new KilnError('oci.source_not_found', `${what} was not found: ${k.message}`, {
      hint: 'check the digest the build step printed, and that it was pushed to that repository',
      cause: k,
    });
  }
  return new KilnError(k.code, `${what}: ${k.message}`, { ...(k.hint ? { hint: k.hint } : {}), kind: k.kind, cause: k, ...(k.details ? { details: k.details } : {}) });
}

async function fetchConfig(client: RegistryClient, ref: ImageRef, m: FetchedManifest): Promise<Record<string, unknown> | undefined> {
  const cfg = m.json.config as { digest?: unknown } | undefined;
  if (typeof cfg?.digest !== 'string') return undefined;
  const bytes = await client.getBlobBytes(ref.registry, ref.repository, cfg.digest);
  try {
    return JSON.parse(new TextDecoder().decode(bytes)) as Record<string, unknown>;
  } catch (e) {
    throw new KilnError('oci.config_invalid', `image config ${cfg.digest} is not JSON`, { cause: e, hint: 'rebuild and push the image' });
  }
}

export async function resolveSources(client: RegistryClient, specs: SourceSpec[], opts: ResolveOptions): Promise<ResolvedSource[]> {
  const refs = checkSourceRefs(specs, opts);
  const concurrency = opts.concurrency ?? 4;
  return mapLimit(specs, concurrency, async (spec, i) => {
    const ref = refs[i] as ImageRef;
    const position = i + 1;
    const what = describeSource({ position, spec });
    try {
      const reference = ref.digest ?? ref.tag ?? 'latest';
      const top = await client.getManifest(ref.registry, ref.repository, reference);
      const children: ResolvedChild[] = [];
      if (isIndexType(top.mediaType)) {
        const descs = Array.isArray(top.json.manifests) ? (top.json.manifests as Record<string, unknown>[]) : [];
        const filter = spec.platforms && spec.platforms.length > 0 ? new Set(spec.platforms.map(platformKey)) : undefined;
        const wanted = descs.filter((d) => {
          const role = classifyChild(d, undefined);
          if (role === 'attestation') return opts.attestations === 'keep';
          const p = platformFromDescriptor(d.platform);
          return !(filter && p && !filter.has(platformKey(p)));
        });
        const fetched = await mapLimit(wanted, concurrency, async (d) => {
          const digest = d.digest;
          if (typeof digest !== 'string' || !isDigest(digest)) {
            throw new KilnError('oci.source_unsupported', `the index lists an entry without a sha256 digest`, { hint: 'rebuild and push the image' });
          }
          const manifest = await client.getManifest(ref.registry, ref.repository, digest);
          if (typeof d.size === 'number' && d.size !== manifest.bytes.byteLength) {
            throw new KilnError('oci.digest_mismatch', `index entry ${digest} says ${d.size} bytes, the manifest has ${manifest.bytes.byteLength}`, {
              hint: 'the source index is corrupt; rebuild and push it',
            });
          }
          const child: ResolvedChild = { manifest, descriptor: d };
          if (classifyChild(d, manifest.json) === 'image' && !isIndexType(manifest.mediaType)) {
            const config = await fetchConfig(client, ref, manifest);
            if (config) child.config = config;
          }
          return child;
        });
        children.push(...fetched);
      } else {
        const child: ResolvedChild = { manifest: top };
        if (classifyChild(undefined, top.json) === 'image') {
          const config = await fetchConfig(client, ref, top);
          if (config) child.config = config;
        }
        children.push(child);
      }
      return { position, spec, ref, top, children };
    } catch (e) {
      throw wrap(e, `${what} [${formatRef(ref)}]`);
    }
  });
}
