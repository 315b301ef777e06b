/**
 * Platforms (os/architecture/variant, os.version, os.features): parsing, alias normalisation and the key
 * used to find duplicates. Pure.
 */
import { KilnError } from '../core/errors.ts';

export interface Platform {
  os: string;
  architecture: string;
  variant?: string;
  'os.version'?: string;
  'os.features'?: string[];
}

const ARCH_ALIASES: Record<string, { architecture: string; variant?: string }> = {
  x86_64: { architecture: 'amd64' },
  'x86-64': { architecture: 'amd64' },
  aarch64: { architecture: 'arm64' },
  armhf: { architecture: 'arm', variant: 'v7' },
  armel: { architecture: 'arm', variant: 'v6' },
  i386: { architecture: '386' },
  i686: { architecture: '386' },
};

const PART_RE = /^[a-z0-9._-]+$/;

/**
 * Normalises architecture aliases to GOARCH names (x86_64→amd64, aarch64→arm64, armhf→arm/v7, armel→arm/v6,
 * i386→386). A variant already given is kept exactly as written (it is part of the digest).
 */
export function normalisePlatform(p: Platform): Platform {
  const arch = p.architecture.toLowerCase();
  const alias = ARCH_ALIASES[arch];
  const out: Platform = { os: p.os.toLowerCase(), architecture: alias?.architecture ?? arch };
  const variant = p.variant ?? alias?.variant;
  if (variant !== undefined && variant !== '') out.variant = variant;
  if (p['os.version']) out['os.version'] = p['os.version'];
  if (p['os.features'] && p['os.features'].length > 0) out['os.features'] = [...p['os.features']];
  return out;
}

/** Parses `os/arch[/variant][:os.version]`, e.g. `linux/arm/v7`, `windows/amd64:10.0.17763.1`. */
export function parsePlatform(input: string, what = 'platform'): Platform {
  const s = input.trim();
  const colon = s.indexOf(':');
  const main = colon >= 0 ? s.slice(0, colon) : s;
  const osVersion = colon >= 0 ? s.slice(colon + 1) : undefined;
  const parts = main.split('/');
  if (parts.length < 2 || parts.length > 3 || parts.some((x) => !PART_RE.test(x.toLowerCase()))) {
    throw new KilnError('oci.platform_invalid', `${what} "${input}" is not a platform`, {
      hint: 'write platforms as os/architecture[/variant], e.g. linux/amd64, linux/arm64, linux/arm/v7',
    });
  }
  const p: Platform = { os: parts[0] ?? '', architecture: parts[1] ?? '' };
  if (parts[2]) p.variant = parts[2];
  if (osVersion) p['os.version'] = osVersion;
  return normalisePlatform(p);
}

export function formatPlatform(p: Platform): string {
  return `${p.os}/${p.architecture}${p.variant ? `/${p.variant}` : ''}${p['os.version'] ? `:${p['os.version']}` : ''}`;
}

/**
 * The key two entries collide on: same os, architecture, variant and os.version, with arm64 ≡ arm64/v8 and
 * arm ≡ arm/v7 (for comparison only; the index keeps what the image says).
 */
export function platformKey(p: Platform): string {
  const n = normalisePlatform(p);
  let variant = n.variant ?? '';
  if (n.architecture === 'arm64' && variant === 'v8') variant = '';
  if (n.architecture === 'arm' && variant === '') variant = 'v7';
  return `${n.os}/${n.architecture}/${variant}/${n['os.version'] ?? ''}`;
}

/** The platform an image config declares, or undefined when it names no os or architecture. */
export function platformFromConfig(config: unknown): Platform | undefined {
  if (typeof config !== 'object' || config === null) return undefined;
  const c = config as Record<string, unknown>;
  if (typeof c.os !== 'string' || typeof c.architecture !== 'string' || c.os === '' || c.architecture === '') return undefined;
  const p: Platform = { os: c.os, architecture: c.architecture };
  if (typeof c.variant === 'string' && c.variant !== '') p.variant = c.variant;
  if (typeof c['os.version'] === 'string' && c['os.version'] !== '') p['os.version'] = c['os.version'];
  const feats = c['os.features'];
  if (Array.isArray(feats) && feats.every((f) => typeof f === 'string') && feats.length > 0) p['os.features'] = feats as string[];
  return normalisePlatform(p);
}

/** Reads a descriptor's `platform` object; undefined when absent or incomplete. */
export function platformFromDescriptor(platform: unknown): Platform | undefined {
  return platformFromConfig(platform);
}

export function isUnknownPlatform(p: Platform): boolean {
  return p.os === 'unknown' || p.architecture === 'unknown';
}

/** Canonical JSON field order for a platform object inside an index. */
export function platformJson(p: Platform): Record<string, unknown> {
  const o: Record<string, unknown> = { architecture: p.architecture, os: p.os };
  if (p['os.version']) o['os.version'] = p['os.version'];
  if (p['os.features']) o['os.features'] = p['os.features'];
  if (p.variant) o.variant = p.variant;
  return o;
}
