/**
 * Masks a job's secret env values in the output its guest prints, before the agent sends (and the server
 * stores) it. Values shorter than MIN_SECRET_MASK_LENGTH are not masked (masking "1" everywhere would ruin
 * the log and hide nothing); a value split across two output flushes (10 ms apart, or a 256 KiB chunk
 * boundary) is not recognised. docs/security.md lists both limits.
 */
export const MIN_SECRET_MASK_LENGTH = 4;
export const SECRET_MASK = '***';

export type Masker = (data: Buffer) => Buffer;

/** A masker for these secret values, or undefined when none is long enough to mask. */
export function makeSecretMasker(values: readonly string[]): Masker | undefined {
  const needles = [...new Set(values.filter((v) => v.length >= MIN_SECRET_MASK_LENGTH))]
    .map((v) => Buffer.from(v))
    // Longest first, so a secret containing another is masked whole.
    .sort((a, b) => b.length - a.length);
  if (needles.length === 0) return undefined;
  const mask = Buffer.from(SECRET_MASK);
  return (data) => {
    let out = data;
    for (const n of needles) {
      let at = out.indexOf(n);
      if (at < 0) continue;
      const parts: Buffer[] = [];
      let from = 0;
      while (at >= 0) {
        parts.push(out.subarray(from, at), mask);
        from = at + n.length;
        at = out.indexOf(n, from);
      }
      parts.push(out.subarray(from));
      out = Buffer.concat(parts);
    }
    return out;
  };
}
