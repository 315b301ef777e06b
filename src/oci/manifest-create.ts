/**
 * `kiln manifest create` as a function: validate the request, resolve the sources, compose the index, push
 * it and read every tag back. The CLI wires flags and printing around it; tests and the benchmark call it.
 */
import { KilnError } from '../core/errors.ts';
import { compose, compositionPlatforms, type ComposeOptions, type Composition, type SourceSpec } from './compose.ts';
import { pushComposition, type PushEvent, type PushReport } from './push.ts';
import { formatRef, isValidTag, parseImageRef, type ImageRef } from './reference.ts';
import type { RegistryClient } from './registry-client.ts';
import { checkSourceRefs, resolveSources } from './resolve.ts';

export interface ManifestCreateRequest {
  target: string;
  tags: string[];
  sources: SourceSpec[];
  compose: Omit<ComposeOptions, 'now'>;
  dryRun: boolean;
  allowCrossRegistry: boolean;
  concurrency?: number;
}

export type ManifestCreateEvent =
  | { kind: 'resolved'; position: number; ref: string; digest: string; mediaType: string }
  | { kind: 'composed'; digest: string; mediaType: string; size: number }
  | { kind: 'warning'; message: string }
  | PushEvent;

export interface ManifestCreateDeps {
  client: RegistryClient;
  now: () => Date;
  onEvent?: (e: ManifestCreateEvent) => void;
}

export interface ManifestCreateResult {
  target: ImageRef;
  digest: string;
  mediaType: string;
  size: number;
  bytes: Uint8Array;
  tags: string[];
  platforms: string[];
  composition: Composition;
  pushed: boolean;
  report?: PushReport;
}

/** The metadata file's content: what a later workflow step needs. */
export function manifestMetadata(r: ManifestCreateResult): Record<string, unknown> {
  const repo = formatRef({ registry: r.target.registry, repository: r.target.repository });
  return {
    mediaType: r.mediaType,
    digest: r.digest,
    size: r.size,
    target: repo,
    tags: r.tags,
    references: r.tags.map((t) => `${repo}:${t}`),
    platforms: r.platforms,
    manifests: r.composition.entries.map((e) => ({ role: e.role, digest: e.digest, mediaType: e.mediaType, platform: e.platform, ...(e.describes ? { describes: e.describes } : {}) })),
    pushed: r.pushed,
  };
}

/** Checks target and tags before any network traffic. */
export function checkTarget(req: Pick<ManifestCreateRequest, 'target' | 'tags' | 'dryRun'>): ImageRef {
  const target = parseImageRef(req.target, 'target');
  if (target.tag || target.digest) {
    throw new KilnError('oci.target_invalid', `target "${req.target}" names a ${target.digest ? 'digest' : 'tag'}; the target is a repository`, {
      hint: `write the repository alone and give tags with --tag: kiln manifest create ${formatRef({ registry: target.registry, repository: target.repository })} --tag ${target.tag ?? 'latest'} …`,
    });
  }
  for (const t of req.tags) {
    if (!isValidTag(t)) {
      throw new KilnError('oci.tag_invalid', `tag "${t}" is not valid`, { hint: 'tags are 1-128 characters of letters, digits, _ . - and do not start with . or -' });
    }
  }
  if (req.tags.length === 0 && !req.dryRun) {
    throw new KilnError('oci.no_tags', 'no --tag given: the index would be unreachable except by digest', { hint: 'add --tag latest (repeatable), or --dry-run to only print the index' });
  }
  return target;
}

export async function createManifest(req: ManifestCreateRequest, deps: ManifestCreateDeps): Promise<ManifestCreateResult> {
  const target = checkTarget(req);
  checkSourceRefs(req.sources, { target, allowCrossRegistry: req.allowCrossRegistry });
  // Check the target takes pushes while the sources resolve (a mirror answers 405, missing rights 401/403).
  const probe = req.dryRun ? undefined : deps.client.probePush(target.registry, target.repository);
  probe?.catch(() => undefined);
  try {
    return await composeAndPush(req, deps, target, probe);
  } catch (e) {
    await probe?.catch(() => undefined); // never leave the probe running behind an error
    throw e;
  }
}

async function composeAndPush(req: ManifestCreateRequest, deps: ManifestCreateDeps, target: ImageRef, probe: Promise<void> | undefined): Promise<ManifestCreateResult> {
  const emit = deps.onEvent ?? (() => undefined);
  const sources = await resolveSources(deps.client, req.sources, {
    target,
    attestations: req.compose.attestations,
    allowCrossRegistry: req.allowCrossRegistry,
    ...(req.concurrency ? { concurrency: req.concurrency } : {}),
  });
  for (const s of sources) emit({ kind: 'resolved', position: s.position, ref: s.spec.ref, digest: s.top.digest, mediaType: s.top.mediaType });
  const comp = compose(sources, { ...req.compose, now: deps.now() });
  for (const w of comp.warnings) emit({ kind: 'warning', message: w });
  emit({ kind: 'composed', digest: comp.digest, mediaType: comp.mediaType, size: comp.size });
  const result: ManifestCreateResult = {
    target,
    digest: comp.digest,
    mediaType: comp.mediaType,
    size: comp.size,
    bytes: comp.bytes,
    tags: [...req.tags],
    platforms: compositionPlatforms(comp),
    composition: comp,
    pushed: false,
  };
  if (req.dryRun) return result;
  await probe;
  result.report = await pushComposition(deps.client, comp, target, req.tags, { ...(req.concurrency ? { concurrency: req.concurrency } : {}), onEvent: emit, probed: true });
  result.pushed = true;
  return result;
}
