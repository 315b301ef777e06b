/** The GitHub part's typed events (tests await them instead of sleeping). */
import { EventEmitter, once } from 'node:events';

export interface GitHubEvents {
  /** A delivery was processed (outcome: applied, duplicate_action, ignored, refused, stale, bad_payload). */
  'delivery.processed': { deliveryId: string; outcome: string };
  'job.refused': { jobId: number; runAttempt: number; code: string; reason: string };
  /** A job kiln serves went in_progress: GitHub's created_at and in_progress times (the pickup figure). */
  'job.started': { jobId: number; runAttempt: number; labels: string[]; createdAt: string | null; startedAt: string | null };
  'runner.state': { name: string; state: string; reason?: string };
  /** A runner ended before it took a job; the job's failure count is now `failures`. */
  'runner.failed': { name: string; jobId: number; runAttempt: number; code: string; failures: number };
  /** kiln holds its GitHub calls until `untilMs` (GitHub's rate limit, or kiln's own budget). */
  'api.throttled': { untilMs: number; reason: string };
  'pass.done': { n: number };
}

export class GitHubEventBus {
  readonly #ee = new EventEmitter();
  constructor() {
    this.#ee.setMaxListeners(0);
  }
  emit<K extends keyof GitHubEvents>(name: K, p: GitHubEvents[K]): void {
    this.#ee.emit(name, p);
  }
  on<K extends keyof GitHubEvents>(name: K, fn: (p: GitHubEvents[K]) => void): () => void {
    this.#ee.on(name, fn);
    return () => this.#ee.off(name, fn);
  }
  async waitFor<K extends keyof GitHubEvents>(name: K, pred: (p: GitHubEvents[K]) => boolean = () => true, timeoutMs = 10_000): Promise<GitHubEvents[K]> {
    const ac = new AbortController();
    const t = setTimeout(() => ac.abort(), timeoutMs);
    try {
      for (;;) {
        const [p] = (await once(this.#ee, name, { signal: ac.signal })) as [GitHubEvents[K]];
        if (pred(p)) return p;
      }
    } catch (e) {
      if (ac.signal.aborted) throw new Error(`timed out after ${timeoutMs} ms waiting for GitHub event ${name}`);
      throw e;
    } finally {
      clearTimeout(t);
    }
  }
}
