/**
 * Runs `fn` over `items` with at most `concurrency` in flight; results in input order. After a failure no
 * new item starts; once the in-flight ones settle, the failure of the earliest item is thrown, so the
 * error a user sees does not depend on timing.
 */
export async function mapLimit<T, R>(items: readonly T[], concurrency: number, fn: (item: T, index: number) => Promise<R>): Promise<R[]> {
  const results = new Array<R>(items.length);
  let next = 0;
  const state: { failed?: { index: number; e: unknown } } = {};
  const fail = (index: number, e: unknown) => {
    if (!state.failed || index < state.failed.index) state.failed = { index, e };
  };
  const worker = async () => {
    while (next < items.length && !state.failed) {
      const i = next++;
      try {
        results[i] = await fn(items[i] as T, i);
      } catch (e) {
        fail(i, e);
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(concurrency, items.length)) }, worker));
  if (state.failed) throw state.failed.e;
  return results;
}
