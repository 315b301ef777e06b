/** X-Hub-Signature-256: HMAC-SHA256 of the raw body, "sha256=" + hex, compared in constant time. */
import { createHmac, timingSafeEqual } from 'node:crypto';

export function signBody(secret: string, body: Buffer | string): string {
  return `sha256=${createHmac('sha256', secret).update(body).digest('hex')}`;
}

/** True when `header` is a valid signature of `body` under any of `secrets` (rotation: old and new). */
export function verifySignature(secrets: readonly string[], body: Buffer, header: string | undefined): boolean {
  if (!header || !/^sha256=[0-9a-fA-F]{64}$/.test(header)) return false;
  const given = Buffer.from(header.slice(7).toLowerCase(), 'hex');
  let ok = false;
  // Every secret is tried (no early exit), so timing does not say which one matched.
  for (const s of secrets) {
    const want = createHmac('sha256', s).update(body).digest();
    if (timingSafeEqual(want, given)) ok = true;
  }
  return ok;
}
