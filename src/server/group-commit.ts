/**
 * Group commit: callers that arrive in the same turn of the event loop, or while the database is busy
 * with earlier calls, are joined into one call. At low load every call runs at once (at the end of its
 * event-loop turn); under load the batches grow by themselves, so the number of statements stays near the
 * number the database can run rather than the number of requests. (The embedded store runs each statement
 * synchronously, so its "busy" shows as requests read together in one turn, not as calls in flight.) If a joined call fails, each caller's part is retried alone, so one caller's bad input cannot
 * fail another's.
 */
export interface GroupCommitOptions {
  /** Calls in flight at once (the embedded store has one session; a PostgreSQL pool has more). */
  maxInFlight: number;
  /** Items per joined call. */
  maxItems: number;
  /**
   * Whether a failed joined call is retried per caller (default true). Only for calls that are atomic (one
   * statement): a call that may have stored part of its work before failing must not be run again.
   */
  retryAlone?: boolean;
}

export function makeGroupCommit<I, O>(run: (items: I[]) => Promise<O[]>, o: GroupCommitOptions): (items: I[]) => Promise<O[]> {
  type Waiter = { items: I[]; done(v: O[]): void; fail(e: unknown): void };
  const queue: Waiter[] = [];
  let inFlight = 0;
  let scheduled = false;

  async function runGroup(group: Waiter[]): Promise<void> {
    const items = group.flatMap((w) => w.items);
    try {
      const out = await run(items);
      if (out.length !== items.length) throw new Error(`group commit: ${out.length} results for ${items.length} items`);
      let at = 0;
      for (const w of group) {
        w.done(out.slice(at, at + w.items.length));
        at += w.items.length;
      }
    } catch (e) {
      if (group.length === 1 || o.retryAlone === false) for (const w of group) w.fail(e);
      else for (const w of group) await Promise.resolve().then(() => run(w.items)).then(w.done, w.fail);
    }
  }

  function pump(): void {
    while (inFlight < o.maxInFlight && queue.length > 0) {
      const group: Waiter[] = [queue.shift()!];
      let n = group[0]!.items.length;
      while (queue.length > 0 && n + queue[0]!.items.length <= o.maxItems) {
        const w = queue.shift()!;
        n += w.items.length;
        group.push(w);
      }
      inFlight++;
      void runGroup(group).finally(() => {
        inFlight--;
        pump();
      });
    }
  }

  return (items) =>
    new Promise<O[]>((done, fail) => {
      queue.push({ items, done, fail });
      if (scheduled) return;
      scheduled = true;
      setImmediate(() => {
        scheduled = false;
        pump();
      });
    });
}
