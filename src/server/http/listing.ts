/**
 * Bounded listings: no listing answer grows past `LIST_BYTE_CAP` bytes of JSON, whatever its `limit` and
 * however large its rows (a job's command and env may be up to a request body, 1 MiB). A listing cut short
 * says so with `next`, the cursor to pass for the rest (`before` for jobs, `after` for hosts), or
 * `truncated: true` where the records are ordered by time (GitHub's; narrow them with `limit` or a filter).
 * Rows are read from the store a page at a time, so the server never holds more than a page beyond the cap.
 */

/** The most JSON one listing answer carries (its items; the envelope is a few bytes more). */
export const LIST_BYTE_CAP = 4 * 1024 * 1024;

const sizeOf = (x: unknown): number => Buffer.byteLength(JSON.stringify(x));

/** Takes items in order while their JSON fits under `cap` (always the first one). */
export function capByBytes<T>(items: readonly T[], cap = LIST_BYTE_CAP): { items: T[]; cut: boolean } {
  const out: T[] = [];
  let bytes = 0;
  for (const it of items) {
    const n = sizeOf(it) + 1;
    if (out.length > 0 && bytes + n > cap) return { items: out, cut: true };
    out.push(it);
    bytes += n;
  }
  return { items: out, cut: false };
}

/**
 * Reads pages of at most `pageSize` rows through `fetchPage(cursor, n)` (cursor undefined first), maps them to
 * their answer form and stops at `limit` items or the byte cap. `next` is the cursor of the last item taken
 * when the listing stopped early or filled its limit (there may be more), else null.
 */
export async function pageByBytes<R, T, C>(o: {
  fetchPage: (cursor: C | undefined, n: number) => Promise<R[]>;
  cursorOf: (row: R) => C;
  toJson: (row: R) => T;
  limit: number;
  cap?: number;
  pageSize?: number;
  start?: C;
}): Promise<{ items: T[]; next: C | null }> {
  const cap = o.cap ?? LIST_BYTE_CAP;
  const pageSize = o.pageSize ?? 100;
  const items: T[] = [];
  let bytes = 0;
  let cursor = o.start;
  for (;;) {
    const want = Math.min(pageSize, o.limit - items.length);
    const rows = await o.fetchPage(cursor, want);
    for (const r of rows) {
      const it = o.toJson(r);
      const n = sizeOf(it) + 1;
      if (items.length > 0 && bytes + n > cap) return { items, next: cursor ?? null };
      items.push(it);
      bytes += n;
      cursor = o.cursorOf(r);
      if (items.length >= o.limit) return { items, next: cursor };
    }
    if (rows.length < want) return { items, next: null };
  }
}
