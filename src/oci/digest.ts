/** Content digests: kiln only produces and accepts sha256. */
import { createHash } from 'node:crypto';
import { KilnError } from '../core/errors.ts';

export const DIGEST_RE = /^sha256:[a-f0-9]{64}$/;

export function sha256Digest(bytes: Uint8Array): string {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
}

export function isDigest(s: string): boolean {
  return DIGEST_RE.test(s);
}

/** Throws unless `bytes` hash to `expected`. `what` names the object for the message. */
export function verifyDigest(bytes: Uint8Array, expected: string, what: string): void {
  const actual = sha256Digest(bytes);
  if (actual !== expected) {
    throw new KilnError('oci.digest_mismatch', `${what}: content hashes to ${actual}, expected ${expected}`, {
      hint: 'the registry returned different bytes than the digest names; check for a proxy rewriting content, then retry',
      kind: 'unavailable',
    });
  }
}
