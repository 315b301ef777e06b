/**
 * The composer's pure half: from resolved sources (raw manifest bytes, their index entries, their image
 * configs) to one index, validated, repaired and serialised deterministically. No I/O: resolve.ts fetches,
 * push.ts writes. Rules: ../../shared/specs/oci.md, research §3.
 */
import { KilnError } from '../core/errors.ts';
import { sha256Digest } from './digest.ts';
import { MediaType, isDockerManifestType, isImageManifestType, isIndexType, isSchema1Type } from './media-types.ts';
import { formatRef, type ImageRef } from './reference.ts';
import {
  formatPlatform,
  isUnknownPlatform,
  normalisePlatform,
  platformFromConfig,
  platformFromDescriptor,
  platformJson,
  platformKey,
  type Platform,
} from './platform.ts';

export type IndexType = 'auto' | 'oci' | 'docker';
export type AttestationMode = 'keep' | 'drop';

/** distribution's manifest body limit (4 MiB); the spec's floor is "at least 4 megabytes". */
export const MAX_INDEX_BYTES = 4 * 1024 * 1024;

export const ATTESTATION_TYPE_KEY = 'vnd.docker.reference.type';
export const ATTESTATION_DIGEST_KEY = 'vnd.docker.reference.digest';
export const CREATED_KEY = 'org.opencontainers.image.created';

/** One source as the user wrote it (CLI or file). */
export interface SourceSpec {
  ref: string;
  /** Overrides the platform of the (single) image this source yields. */
  platform?: Platform;
  /** When the source is an index: keep only these platforms. */
  platforms?: Platform[];
  /** Annotations on this source's descriptor in the index (OCI only). */
  annotations?: Record<string, string>;
}

export interface ComposeOptions {
  indexType: IndexType;
  attestations: AttestationMode;
  /** none | now | max-child | source-date-epoch | an RFC 3339 time. */
  created: string;
  annotations: Record<string, string>;
  allowMixed: boolean;
  allowDuplicatePlatforms: boolean;
  forcePlatform: boolean;
  now: Date;
  /** SOURCE_DATE_EPOCH, when created is source-date-epoch. */
  sourceDateEpoch?: string | undefined;
}

export const DEFAULT_COMPOSE_OPTIONS: Omit<ComposeOptions, 'now'> = {
  indexType: 'auto',
  attestations: 'keep',
  created: 'none',
  annotations: {},
  allowMixed: false,
  allowDuplicatePlatforms: false,
  forcePlatform: false,
};

/** A manifest as fetched: the raw bytes are what gets pushed, never a re-serialisation. */
export interface FetchedManifest {
  digest: string;
  mediaType: string;
  bytes: Uint8Array;
  json: Record<string, unknown>;
}

export interface ResolvedChild {
  manifest: FetchedManifest;
  /** The child's entry in the source index (absent when the source is a plain manifest). */
  descriptor?: Record<string, unknown>;
  /** The image config, for runnable images. */
  config?: Record<string, unknown>;
}

export interface ResolvedSource {
  /** 1-based position among the sources, for messages. */
  position: number;
  spec: SourceSpec;
  ref: ImageRef;
  top: FetchedManifest;
  children: ResolvedChild[];
}

export type ChildRole = 'image' | 'attestation' | 'other';

export interface ComposedEntry {
  role: 'image' | 'attestation';
  digest: string;
  mediaType: string;
  size: number;
  platform: Platform;
  annotations?: Record<string, string>;
  artifactType?: string;
  source: ResolvedSource;
  manifest: FetchedManifest;
  /** For attestations: the image digest they describe. */
  describes?: string;
}

export interface Composition {
  mediaType: string;
  bytes: Uint8Array;
  digest: string;
  size: number;
  entries: ComposedEntry[];
  created?: string;
  warnings: string[];
}

export function describeSource(s: { position: number; spec: SourceSpec }): string {
  return `source ${s.position} (${s.spec.ref})`;
}

function str(v: unknown): string | undefined {
  return typeof v === 'string' ? v : undefined;
}

function stringMap(v: unknown): Record<string, string> | undefined {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return undefined;
  const out: Record<string, string> = {};
  for (const [k, x] of Object.entries(v)) if (typeof x === 'string') out[k] = x;
  return out;
}

/** What a child of a source index (or a source itself) is: a runnable image, an attestation, or neither. */
export function classifyChild(descriptor: Record<string, unknown> | undefined, manifest: Record<string, unknown> | undefined): ChildRole {
  const ann = stringMap(descriptor?.annotations);
  if (ann?.[ATTESTATION_TYPE_KEY] === 'attestation-manifest') return 'attestation';
  if (manifest && str(manifest.artifactType) === MediaType.attestationArtifact && typeof manifest.subject === 'object') return 'attestation';
  if (!manifest) return isImageManifestType(str(descriptor?.mediaType)) ? 'image' : 'other';
  const config = manifest.config as Record<string, unknown> | undefined;
  const cmt = str(config?.mediaType);
  if (str(manifest.artifactType) !== undefined) return 'other';
  return cmt === MediaType.ociConfig || cmt === MediaType.dockerConfig ? 'image' : 'other';
}

/** The digest an attestation child describes, from its index annotations or its `subject`. */
export function attestationSubject(child: ResolvedChild): string | undefined {
  const ann = stringMap(child.descriptor?.annotations);
  const fromAnn = ann?.[ATTESTATION_DIGEST_KEY];
  if (fromAnn) return fromAnn;
  const subject = child.manifest.json.subject as Record<string, unknown> | undefined;
  return str(subject?.digest);
}

const RFC3339_RE = /^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$/;

export function isRfc3339(s: string): boolean {
  const m = RFC3339_RE.exec(s);
  if (!m) return false;
  const [mo, d, h, mi, se] = [m[2], m[3], m[4], m[5], m[6]].map(Number) as [number, number, number, number, number];
  return mo >= 1 && mo <= 12 && d >= 1 && d <= 31 && h <= 23 && mi <= 59 && se <= 60 && !Number.isNaN(Date.parse(s));
}

/** Go's zero time (0001-01-01) and the epoch (1970-01-01) leak from reproducible builds: both mean "unset". */
export function isPlaceholderTime(s: string): boolean {
  const t = Date.parse(s);
  return Number.isNaN(t) || t <= 0;
}

function isoSeconds(d: Date): string {
  return d.toISOString().replace(/\.\d{3}Z$/, 'Z');
}

const PREDEFINED_OCI_KEYS = new Set(
  ['created', 'authors', 'url', 'documentation', 'source', 'version', 'revision', 'vendor', 'licenses', 'ref.name', 'title', 'description', 'base.digest', 'base.name'].map(
    (k) => `org.opencontainers.image.${k}`,
  ),
);

/** Checks annotation keys and values; returns warnings, throws on errors. */
export function validateAnnotations(ann: Record<string, unknown>, where: string): string[] {
  const warnings: string[] = [];
  for (const [k, v] of Object.entries(ann)) {
    if (k === '') throw new KilnError('oci.annotation_invalid', `${where}: an annotation has an empty key`, { hint: 'write annotations as KEY=VALUE' });
    if (typeof v !== 'string') {
      throw new KilnError('oci.annotation_invalid', `${where}: annotation "${k}" is not a string`, { hint: 'quote the value in YAML ("1.0", "true")' });
    }
    if ((k === CREATED_KEY || k === 'created') && !isRfc3339(v)) {
      throw new KilnError('oci.created_invalid', `${where}: annotation "${k}" is "${v}", not an RFC 3339 time`, {
        hint: 'write times like 2024-05-01T12:00:00Z, or use --created now|max-child',
      });
    }
    if (k.startsWith('org.opencontainers.image.') && !PREDEFINED_OCI_KEYS.has(k)) {
      warnings.push(`${where}: annotation "${k}" is in the reserved org.opencontainers.image namespace but is not a key the image spec defines`);
    }
  }
  return warnings;
}

function resolveCreated(opts: ComposeOptions, images: ComposedEntry[], warnings: string[]): string | undefined {
  const c = opts.created;
  if (c === 'none') return undefined;
  if (c === 'now') return isoSeconds(opts.now);
  if (c === 'source-date-epoch') {
    const e = opts.sourceDateEpoch;
    if (e === undefined || !/^\d+$/.test(e)) {
      throw new KilnError('oci.created_invalid', '--created source-date-epoch needs SOURCE_DATE_EPOCH set to whole seconds since 1970', {
        hint: 'export SOURCE_DATE_EPOCH=$(git log -1 --format=%ct), or use --created now|max-child|<RFC 3339 time>',
      });
    }
    return isoSeconds(new Date(Number(e) * 1000));
  }
  if (c === 'max-child') {
    let best: { t: number; s: string } | undefined;
    for (const e of images) {
      const created = str(e.source.children.find((ch) => ch.manifest.digest === e.digest)?.config?.created);
      if (!created || !isRfc3339(created) || isPlaceholderTime(created)) continue;
      const t = Date.parse(created);
      if (!best || t > best.t) best = { t, s: created };
    }
    if (!best) {
      warnings.push('--created max-child: no image config has a real creation time (0001-01-01 and 1970-01-01 count as unset); the index gets no created annotation');
      return undefined;
    }
    return isoSeconds(new Date(best.t));
  }
  if (!isRfc3339(c)) {
    throw new KilnError('oci.created_invalid', `--created "${c}" is not none, now, max-child, source-date-epoch or an RFC 3339 time`, {
      hint: 'write times like 2024-05-01T12:00:00Z',
    });
  }
  return c;
}

function sortedMap(m: Record<string, string>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const k of Object.keys(m).sort()) out[k] = m[k] as string;
  return out;
}

/** Serialises an index with a fixed field order and no whitespace: same inputs, same bytes, same digest. */
export function serialiseIndex(mediaType: string, entries: ComposedEntry[], annotations: Record<string, string>): Uint8Array {
  const docker = mediaType === MediaType.dockerList;
  const manifests = entries.map((e) => {
    const d: Record<string, unknown> = { mediaType: e.mediaType, digest: e.digest, size: e.size };
    if (!docker && e.artifactType) d.artifactType = e.artifactType;
    d.platform = platformJson(e.platform);
    if (!docker && e.annotations && Object.keys(e.annotations).length > 0) d.annotations = sortedMap(e.annotations);
    return d;
  });
  const index: Record<string, unknown> = { schemaVersion: 2, mediaType, manifests };
  if (!docker && Object.keys(annotations).length > 0) index.annotations = sortedMap(annotations);
  return new TextEncoder().encode(JSON.stringify(index));
}

/** Composes the index. Throws a KilnError naming the source and the fix for anything it must reject. */
export function compose(sources: ResolvedSource[], opts: ComposeOptions): Composition {
  if (sources.length === 0) {
    throw new KilnError('oci.no_sources', 'no sources given: nothing to compose', {
      hint: 'name each per-architecture image by digest: kiln manifest create TARGET --tag T host/repo@sha256:… host/repo@sha256:…',
    });
  }
  const warnings: string[] = [];
  const images: ComposedEntry[] = [];
  const attestationCandidates: { source: ResolvedSource; child: ResolvedChild }[] = [];
  const byKey = new Map<string, ComposedEntry>();
  const byDigest = new Map<string, ComposedEntry>();

  for (const src of sources) {
    const name = describeSource(src);
    const top = src.top;
    if (isSchema1Type(top.mediaType)) {
      throw new KilnError('oci.source_unsupported', `${name} is a Docker schema 1 manifest, which cannot go in an index`, {
        hint: 'rebuild and push the image with a current Docker, buildah or BuildKit (schema 2 or OCI)',
      });
    }
    if (!isIndexType(top.mediaType) && !isImageManifestType(top.mediaType)) {
      throw new KilnError('oci.source_unsupported', `${name} has media type "${top.mediaType}", which is not an image manifest or index`, {
        hint: 'point the source at a container image (by digest)',
      });
    }
    if (src.spec.annotations) warnings.push(...validateAnnotations(src.spec.annotations, name));
    const fromIndex = isIndexType(top.mediaType);
    const runnable: { child: ResolvedChild; platform: Platform }[] = [];
    for (const child of src.children) {
      const mt = child.manifest.mediaType;
      if (isIndexType(mt)) {
        throw new KilnError('oci.source_unsupported', `${name} contains a nested index (${child.manifest.digest}); kiln never writes nested indexes`, {
          hint: 'name the inner index (or its images) directly as sources',
        });
      }
      if (isSchema1Type(mt)) {
        throw new KilnError('oci.source_unsupported', `${name} contains a Docker schema 1 manifest (${child.manifest.digest})`, {
          hint: 'rebuild and push the image with a current builder',
        });
      }
      const role = classifyChild(child.descriptor, child.manifest.json);
      if (role === 'attestation') {
        attestationCandidates.push({ source: src, child });
        continue;
      }
      if (role === 'other' || !isImageManifestType(mt)) {
        if (!fromIndex) {
          throw new KilnError('oci.source_unsupported', `${name} is not a runnable image (media type ${mt}, config ${str((child.manifest.json.config as Record<string, unknown> | undefined)?.mediaType) ?? 'none'})`, {
            hint: 'point the source at a container image; artifacts cannot be index platforms',
          });
        }
        warnings.push(`${name}: skipped entry ${child.manifest.digest} (${mt}), which is neither an image nor an attestation`);
        continue;
      }
      const fromDesc = platformFromDescriptor(child.descriptor?.platform);
      const fromConfig = platformFromConfig(child.config);
      let platform = fromDesc ?? fromConfig;
      if (platform && isUnknownPlatform(platform)) platform = fromConfig && !isUnknownPlatform(fromConfig) ? fromConfig : undefined;
      if (src.spec.platforms && src.spec.platforms.length > 0) {
        const wanted = new Set(src.spec.platforms.map(platformKey));
        if (!platform || !wanted.has(platformKey(platform))) continue;
      }
      runnable.push({ child, platform: platform ?? { os: '', architecture: '' } });
    }
    if (src.spec.platforms && src.spec.platforms.length > 0) {
      const have = new Set(runnable.map((r) => platformKey(r.platform)));
      const missing = src.spec.platforms.filter((p) => !have.has(platformKey(p)));
      if (missing.length > 0) {
        throw new KilnError('oci.platform_not_found', `${name} has no image for ${missing.map(formatPlatform).join(', ')}`, {
          hint: 'check the platforms filter against what the source holds (skopeo inspect --raw docker://REF)',
        });
      }
    }
    if (runnable.length === 0) {
      throw new KilnError('oci.source_unsupported', `${name} holds no runnable image (only attestations or artifacts)`, {
        hint: 'point the source at the image the build pushed, not at its attestation',
      });
    }
    if (src.spec.platform && runnable.length > 1) {
      throw new KilnError('oci.platform_ambiguous', `${name} holds ${runnable.length} images, so one platform override cannot apply to all`, {
        hint: 'add a platforms filter that picks one image, or drop the override',
      });
    }
    for (const r of runnable) {
      const child = r.child;
      const fromConfig = platformFromConfig(child.config);
      let platform = r.platform;
      const override = src.spec.platform ? normalisePlatform(src.spec.platform) : undefined;
      if (override) {
        if (fromConfig && (fromConfig.os !== override.os || fromConfig.architecture !== override.architecture) && !opts.forcePlatform) {
          throw new KilnError('oci.platform_contradicts_config', `${name}: platform override ${formatPlatform(override)} contradicts the image config, which says ${formatPlatform(fromConfig)}`, {
            hint: 'fix the override (a mislabelled image makes clients run the wrong binary), or pass --force-platform if the config is wrong',
          });
        }
        platform = override;
      }
      if (!platform.os || !platform.architecture || isUnknownPlatform(platform)) {
        throw new KilnError('oci.platform_missing', `${name}: image ${child.manifest.digest} names no os/architecture in its index entry or its config`, {
          hint: 'give the platform: SOURCE,platform=linux/arm64 on the command line, or `platform:` in the file',
        });
      }
      // Repair: fill what the descriptor lacks from the config, when they describe the same architecture.
      if (fromConfig && fromConfig.os === platform.os && fromConfig.architecture === platform.architecture) {
        platform = { ...platform };
        if (!platform.variant && fromConfig.variant) platform.variant = fromConfig.variant;
        if (!platform['os.version'] && fromConfig['os.version']) platform['os.version'] = fromConfig['os.version'];
        if (!platform['os.features'] && fromConfig['os.features']) platform['os.features'] = fromConfig['os.features'];
      }
      if (platform.architecture === 'arm' && !platform.variant) {
        warnings.push(`${name}: linux/arm image without a variant; clients assume v7 (set platform linux/arm/v6 or v7 to be explicit)`);
      }
      const digest = child.manifest.digest;
      const existing = byDigest.get(digest);
      if (existing) {
        if (platformKey(existing.platform) !== platformKey(platform)) {
          throw new KilnError('oci.platform_duplicate', `${name}: image ${digest} is already in the index from ${describeSource(existing.source)} as ${formatPlatform(existing.platform)}, here as ${formatPlatform(platform)}`, {
            hint: 'one image can have one platform; remove one of the sources or fix its override',
          });
        }
        warnings.push(`${name}: image ${digest} is already in the index from ${describeSource(existing.source)}; listed once`);
        continue;
      }
      const key = platformKey(platform);
      const clash = byKey.get(key);
      if (clash && !opts.allowDuplicatePlatforms) {
        throw new KilnError('oci.platform_duplicate', `${name} and ${describeSource(clash.source)} are both ${formatPlatform(platform)} (${digest} vs ${clash.digest}); clients would silently pick the first`, {
          hint: 'remove one of them, or give each its right platform (SOURCE,platform=os/arch[/variant])',
        });
      }
      const annotations: Record<string, string> = { ...(stringMap(child.descriptor?.annotations) ?? {}), ...(src.spec.annotations ?? {}) };
      const entry: ComposedEntry = {
        role: 'image',
        digest,
        mediaType: child.manifest.mediaType,
        size: child.manifest.bytes.byteLength,
        platform,
        source: src,
        manifest: child.manifest,
      };
      if (Object.keys(annotations).length > 0) entry.annotations = annotations;
      images.push(entry);
      byDigest.set(digest, entry);
      if (!clash) byKey.set(key, entry);
    }
  }

  const attestations: ComposedEntry[] = [];
  if (opts.attestations === 'keep') {
    const seen = new Set<string>();
    for (const { source, child } of attestationCandidates) {
      const describes = attestationSubject(child);
      if (!describes || !byDigest.has(describes)) {
        warnings.push(`${describeSource(source)}: dropped attestation ${child.manifest.digest}, which describes no image in this index`);
        continue;
      }
      if (seen.has(child.manifest.digest)) continue;
      seen.add(child.manifest.digest);
      const annotations = { ...(stringMap(child.descriptor?.annotations) ?? {}) };
      annotations[ATTESTATION_TYPE_KEY] ??= 'attestation-manifest';
      annotations[ATTESTATION_DIGEST_KEY] ??= describes;
      const entry: ComposedEntry = {
        role: 'attestation',
        digest: child.manifest.digest,
        mediaType: child.manifest.mediaType,
        size: child.manifest.bytes.byteLength,
        platform: { os: 'unknown', architecture: 'unknown' },
        annotations,
        source,
        manifest: child.manifest,
        describes,
      };
      const at = str(child.descriptor?.artifactType) ?? str(child.manifest.json.artifactType);
      if (at) entry.artifactType = at;
      attestations.push(entry);
    }
  }
  const entries = [...images, ...attestations];

  // Index annotations.
  warnings.push(...validateAnnotations(opts.annotations, 'index annotations'));
  const created = resolveCreated(opts, images, warnings);
  const indexAnnotations: Record<string, string> = { ...opts.annotations };
  if (created) indexAnnotations[CREATED_KEY] = created;

  // Index type.
  const dockerChildren = entries.filter((e) => isDockerManifestType(e.mediaType));
  const ociChildren = entries.filter((e) => !isDockerManifestType(e.mediaType));
  const hasDescriptorAnnotations = entries.some((e) => e.annotations && Object.keys(e.annotations).length > 0);
  const hasAnnotations = Object.keys(indexAnnotations).length > 0 || hasDescriptorAnnotations;
  if (dockerChildren.length > 0 && ociChildren.length > 0 && !opts.allowMixed) {
    const d = dockerChildren[0] as ComposedEntry;
    const o = ociChildren[0] as ComposedEntry;
    throw new KilnError('oci.mixed_children', `${describeSource(d.source)} is a Docker manifest but ${describeSource(o.source)} is OCI (${o.role}); some registries and clients reject mixed indexes`, {
      hint: 'build every architecture with the same tool settings (e.g. buildx oci-mediatypes=true), drop attestations with --attestations drop, or pass --allow-mixed',
    });
  }
  let mediaType: string;
  if (opts.indexType === 'docker') {
    if (ociChildren.length > 0) {
      const o = ociChildren[0] as ComposedEntry;
      throw new KilnError('oci.index_type_conflict', `${describeSource(o.source)} is OCI-typed (${o.role} ${o.digest}); a Docker manifest list can hold only Docker manifests`, {
        hint: o.role === 'attestation' ? 'pass --attestations drop, or use --index-type oci (or auto)' : 'use --index-type oci (or auto)',
      });
    }
    if (hasAnnotations) {
      throw new KilnError('oci.annotations_on_docker_list', 'a Docker manifest list has no annotations, but annotations were asked for (or a created time, or source descriptor annotations)', {
        hint: 'use --index-type oci (or auto), or drop the annotations and --created',
      });
    }
    mediaType = MediaType.dockerList;
  } else if (opts.indexType === 'oci') {
    mediaType = MediaType.ociIndex;
  } else {
    mediaType = ociChildren.length === 0 && !hasAnnotations && attestations.length === 0 ? MediaType.dockerList : MediaType.ociIndex;
  }

  const bytes = serialiseIndex(mediaType, entries, indexAnnotations);
  if (bytes.byteLength > MAX_INDEX_BYTES) {
    throw new KilnError('oci.index_too_large', `the index would be ${bytes.byteLength} bytes, over the 4 MiB (${MAX_INDEX_BYTES} bytes) registries accept`, {
      hint: 'shorten the annotations or split the image into fewer platforms',
    });
  }
  const result: Composition = { mediaType, bytes, digest: sha256Digest(bytes), size: bytes.byteLength, entries, warnings };
  if (created) result.created = created;
  return result;
}

/** The platforms an index lists, for output and metadata. */
export function compositionPlatforms(c: Composition): string[] {
  return c.entries.filter((e) => e.role === 'image').map((e) => formatPlatform(e.platform));
}

export function sourceRepoLabel(s: ResolvedSource): string {
  return formatRef({ registry: s.ref.registry, repository: s.ref.repository });
}
