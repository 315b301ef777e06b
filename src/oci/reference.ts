/**
 * Image references (`host[:port]/repo[:tag][@sha256:…]`) and the distribution-spec name and tag rules.
 * Pure: no I/O.
 */
import { KilnError } from '../core/errors.ts';
import { DIGEST_RE } from './digest.ts';

export interface ImageRef {
  /** Registry as the user addresses it (`docker.io` for Docker Hub), lower case, with port if any. */
  registry: string;
  repository: string;
  tag?: string;
  digest?: string;
}

export const DOCKER_HUB = 'docker.io';
/** Where Docker Hub's registry API actually answers. */
export const DOCKER_HUB_API = 'registry-1.docker.io';

const COMPONENT = '[a-z0-9]+(?:(?:\\.|_|__|-+)[a-z0-9]+)*';
const NAME_RE = new RegExp(`^${COMPONENT}(?:/${COMPONENT})*$`);
const TAG_RE = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$/;
const HOST_RE = /^(?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)(?::[0-9]{1,5})?$/;

export function isValidRepository(name: string): boolean {
  return NAME_RE.test(name);
}

export function isValidTag(tag: string): boolean {
  return TAG_RE.test(tag);
}

function looksLikeHost(component: string): boolean {
  return component.includes('.') || component.includes(':') || component === 'localhost' || component.startsWith('[');
}

/** Parses an image reference. `what` names it in errors ("source 2", "target"). */
export function parseImageRef(input: string, what = 'reference'): ImageRef {
  const bad = (why: string, hint: string) =>
    new KilnError('oci.reference_invalid', `${what} "${input}" is not a valid image reference: ${why}`, { hint });
  let rest = input.trim();
  if (rest === '') throw bad('it is empty', 'write it as host[:port]/repository@sha256:<digest>');
  if (/^[a-z]+:\/\//i.test(rest)) throw bad('it has a URL scheme', 'drop the scheme (http:// or https://); configure plain HTTP with --plain-http HOST');
  let digest: string | undefined;
  const at = rest.indexOf('@');
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!DIGEST_RE.test(digest)) throw bad(`"${digest}" is not a sha256 digest`, 'digests look like sha256:<64 lower-case hex characters>');
  }
  let tag: string | undefined;
  const slash = rest.lastIndexOf('/');
  const colon = rest.lastIndexOf(':');
  if (colon > slash && colon >= 0) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!isValidTag(tag)) throw bad(`tag "${tag}" is not valid`, 'tags are 1-128 characters of letters, digits, _ . - and do not start with . or -');
  }
  const parts = rest.split('/');
  let registry = DOCKER_HUB;
  if (parts.length > 1 && looksLikeHost(parts[0] ?? '')) {
    registry = (parts.shift() ?? '').toLowerCase();
    if (!HOST_RE.test(registry)) throw bad(`registry host "${registry}" is not valid`, 'write the host as name[:port] or [ipv6]:port');
  }
  if (registry === 'index.docker.io' || registry === DOCKER_HUB_API) registry = DOCKER_HUB;
  let repository = parts.join('/');
  if (registry === DOCKER_HUB && parts.length === 1) repository = `library/${repository}`;
  if (!isValidRepository(repository)) {
    throw bad(`repository "${repository}" is not valid`, 'repository names are lower-case letters, digits and separators (. _ __ -) in /-separated parts');
  }
  if (`${registry}/${repository}`.length > 255) throw bad('host and repository are longer than 255 characters', 'use a shorter repository name');
  const ref: ImageRef = { registry, repository };
  if (tag !== undefined) ref.tag = tag;
  if (digest !== undefined) ref.digest = digest;
  return ref;
}

export function formatRef(ref: ImageRef): string {
  return `${ref.registry}/${ref.repository}${ref.tag ? `:${ref.tag}` : ''}${ref.digest ? `@${ref.digest}` : ''}`;
}

/** The host the registry API is reached at (Docker Hub answers elsewhere than its name). */
export function apiHost(registry: string): string {
  return registry === DOCKER_HUB ? DOCKER_HUB_API : registry;
}

/** The host part without a port, brackets removed. */
export function hostName(registry: string): string {
  if (registry.startsWith('[')) return registry.slice(1, registry.indexOf(']'));
  const c = registry.lastIndexOf(':');
  return c >= 0 ? registry.slice(0, c) : registry;
}

export function isLoopbackHost(registry: string): boolean {
  const h = hostName(registry).toLowerCase();
  return h === 'localhost' || h === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h);
}
