/**
 * The composer's input, from the command line and from a YAML file (modelled on manifest-tool's spec).
 * Pure: parses text the CLI read; reports every problem at once.
 */
import { KilnError } from '../core/errors.ts';
import type { AttestationMode, IndexType, SourceSpec } from './compose.ts';
import { parsePlatform, type Platform } from './platform.ts';
import type { HostConfigs } from './transport-policy.ts';

export interface ManifestSpec {
  target?: string;
  tags: string[];
  sources: SourceSpec[];
  indexType?: IndexType;
  attestations?: AttestationMode;
  created?: string;
  annotations: Record<string, string>;
  registries: HostConfigs;
  /** CA file paths per host; the CLI reads them into `registries[host].ca`. */
  caFiles: Record<string, string>;
}

export const INDEX_TYPES: readonly IndexType[] = ['auto', 'oci', 'docker'];
export const ATTESTATION_MODES: readonly AttestationMode[] = ['keep', 'drop'];

/** `REF[,platform=os/arch[/variant]][,platforms=os/arch]…` — commas never occur in image references. */
export function parseSourceArg(arg: string, position: number): SourceSpec {
  const [ref, ...opts] = arg.split(',');
  const spec: SourceSpec = { ref: (ref ?? '').trim() };
  for (const o of opts) {
    const eq = o.indexOf('=');
    const key = eq >= 0 ? o.slice(0, eq).trim() : o.trim();
    const value = eq >= 0 ? o.slice(eq + 1).trim() : '';
    if (key === 'platform') spec.platform = parsePlatform(value, `source ${position} platform`);
    else if (key === 'platforms') (spec.platforms ??= []).push(parsePlatform(value, `source ${position} platforms`));
    else {
      throw new KilnError('oci.source_invalid', `source ${position} (${arg}): unknown option "${key}"`, {
        hint: 'write sources as REF or REF,platform=os/arch[/variant] (platforms=… filters an index source)',
      });
    }
  }
  return spec;
}

/** `KEY=VALUE` annotations from the command line. */
export function parseAnnotationArgs(args: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const a of args) {
    const eq = a.indexOf('=');
    if (eq <= 0) throw new KilnError('oci.annotation_invalid', `--annotation "${a}" is not KEY=VALUE`, { hint: 'write --annotation org.opencontainers.image.source=https://…' });
    out[a.slice(0, eq)] = a.slice(eq + 1);
  }
  return out;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

const TOP_KEYS = new Set(['target', 'tags', 'index-type', 'attestations', 'created', 'annotations', 'sources', 'manifests', 'registry', 'registries']);

/** Parses the YAML file (the yaml module is loaded only when a file is given); see parseManifestSpec. */
export async function parseManifestSpecYaml(text: string, file: string): Promise<ManifestSpec> {
  const { parse } = await import('yaml');
  let doc: unknown;
  try {
    doc = parse(text);
  } catch (e) {
    throw new KilnError('oci.spec_invalid', `${file} is not valid YAML: ${(e as Error).message}`, { cause: e, hint: 'fix the YAML syntax' });
  }
  return parseManifestSpec(doc, file);
}

/** Validates a parsed spec document; every problem found is listed in one error. */
export function parseManifestSpec(doc: unknown, file: string): ManifestSpec {
  const problems: string[] = [];
  const spec: ManifestSpec = { tags: [], sources: [], annotations: {}, registries: {}, caFiles: {} };
  if (!isRecord(doc)) {
    throw new KilnError('oci.spec_invalid', `${file} must be a YAML mapping with target, tags and sources`, { hint: 'see docs/multi-arch.md for an example' });
  }
  for (const k of Object.keys(doc)) if (!TOP_KEYS.has(k)) problems.push(`unknown key "${k}"`);
  const strMap = (v: unknown, where: string): Record<string, string> => {
    const out: Record<string, string> = {};
    if (v === undefined || v === null) return out;
    if (!isRecord(v)) {
      problems.push(`${where} must be a mapping of strings`);
      return out;
    }
    for (const [k, x] of Object.entries(v)) {
      if (typeof x === 'string') out[k] = x;
      else problems.push(`${where}.${k} must be a string (quote it)`);
    }
    return out;
  };
  if (doc.target !== undefined) {
    if (typeof doc.target === 'string') spec.target = doc.target;
    else problems.push('target must be a string');
  }
  if (doc.tags !== undefined) {
    if (Array.isArray(doc.tags) && doc.tags.every((t) => typeof t === 'string' || typeof t === 'number')) spec.tags = doc.tags.map(String);
    else problems.push('tags must be a list of strings');
  }
  const enumKey = <T extends string>(key: string, allowed: readonly T[]): T | undefined => {
    const v = doc[key];
    if (v === undefined) return undefined;
    if (typeof v === 'string' && (allowed as readonly string[]).includes(v)) return v as T;
    problems.push(`${key} must be one of ${allowed.join(', ')}`);
    return undefined;
  };
  const it = enumKey('index-type', INDEX_TYPES);
  if (it) spec.indexType = it;
  const am = enumKey('attestations', ATTESTATION_MODES);
  if (am) spec.attestations = am;
  if (doc.created !== undefined) {
    if (typeof doc.created === 'string') spec.created = doc.created;
    else if (doc.created instanceof Date) spec.created = doc.created.toISOString().replace(/\.000Z$/, 'Z');
    else problems.push('created must be a string (quote RFC 3339 times)');
  }
  spec.annotations = strMap(doc.annotations, 'annotations');
  const rawSources = doc.sources ?? doc.manifests;
  if (rawSources !== undefined) {
    if (!Array.isArray(rawSources)) problems.push('sources must be a list');
    else {
      rawSources.forEach((s: unknown, i) => {
        const where = `sources[${i}]`;
        if (typeof s === 'string') {
          spec.sources.push({ ref: s });
          return;
        }
        if (!isRecord(s)) {
          problems.push(`${where} must be a reference or a mapping with ref`);
          return;
        }
        const ref = s.ref ?? s.image;
        if (typeof ref !== 'string') {
          problems.push(`${where}.ref is missing`);
          return;
        }
        const src: SourceSpec = { ref };
        for (const k of Object.keys(s)) if (!['ref', 'image', 'platform', 'platforms', 'annotations'].includes(k)) problems.push(`${where}: unknown key "${k}"`);
        const plat = (v: unknown, w: string): Platform | undefined => {
          if (typeof v === 'string') {
            try {
              return parsePlatform(v, w);
            } catch (e) {
              problems.push((e as Error).message);
              return undefined;
            }
          }
          if (isRecord(v) && typeof v.os === 'string' && typeof v.architecture === 'string') {
            return parsePlatform(`${v.os}/${v.architecture}${typeof v.variant === 'string' ? `/${v.variant}` : ''}`, w);
          }
          problems.push(`${w} must be os/arch[/variant]`);
          return undefined;
        };
        if (s.platform !== undefined) {
          const p = plat(s.platform, `${where}.platform`);
          if (p) src.platform = p;
        }
        if (s.platforms !== undefined) {
          if (!Array.isArray(s.platforms)) problems.push(`${where}.platforms must be a list`);
          else src.platforms = s.platforms.map((p, j) => plat(p, `${where}.platforms[${j}]`)).filter((p): p is Platform => p !== undefined);
        }
        if (s.annotations !== undefined) src.annotations = strMap(s.annotations, `${where}.annotations`);
        spec.sources.push(src);
      });
    }
  }
  const regs = doc.registry ?? doc.registries;
  if (regs !== undefined) {
    if (!isRecord(regs)) problems.push('registry must be a mapping of host to settings');
    else {
      for (const [host, v] of Object.entries(regs)) {
        if (!isRecord(v)) {
          problems.push(`registry.${host} must be a mapping`);
          continue;
        }
        const c: { plainHttp?: boolean; insecureSkipVerify?: boolean } = {};
        for (const [k, x] of Object.entries(v)) {
          if (k === 'plain-http' && typeof x === 'boolean') c.plainHttp = x;
          else if (k === 'insecure-skip-verify' && typeof x === 'boolean') c.insecureSkipVerify = x;
          else if (k === 'ca' && typeof x === 'string') spec.caFiles[host] = x;
          else problems.push(`registry.${host}.${k}: expected plain-http (bool), insecure-skip-verify (bool) or ca (path)`);
        }
        spec.registries[host] = c;
      }
    }
  }
  if (problems.length > 0) {
    throw new KilnError('oci.spec_invalid', `${file} has ${problems.length} problem(s):\n  - ${problems.join('\n  - ')}`, {
      hint: 'fix the file; see docs/multi-arch.md for the format',
    });
  }
  return spec;
}
