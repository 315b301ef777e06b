/**
 * Idempotent job submission: a client's `Idempotency-Key` names one job for a window. The first request
 * with a key stores the job and the key together (one transaction); a repeat within the window gets that
 * job back; a repeat with a different body is refused. Keys are per tenant.
 */
import { createHash } from 'node:crypto';
import { sql } from 'kysely';
import { KilnError } from '../core/errors.ts';
import type { Job, JobSpec } from '../core/job.ts';
import { getJob, insertJobs } from './jobs.ts';
import type { Db } from './store.ts';

/** How long a key is remembered (as Stripe's): a retry after that makes a new job. */
export const IDEMPOTENCY_WINDOW_MS = 24 * 60 * 60 * 1000;

const KEY_RE = /^[\x21-\x7e]{1,255}$/;

/** Checks a key's shape: 1-255 printable ASCII characters, no spaces. */
export function checkIdempotencyKey(key: string): string {
  if (!KEY_RE.test(key)) {
    throw new KilnError('request.bad_idempotency_key', 'the Idempotency-Key header must be 1-255 printable ASCII characters without spaces', {
      hint: 'send a random value such as a UUID, the same one for every retry of one submission',
    });
  }
  return key;
}

/** A stable hash of a request body (object keys sorted), to tell a retry from a different request. */
export function requestHash(body: unknown): string {
  const canon = (v: unknown): unknown =>
    Array.isArray(v) ? v.map(canon) : v && typeof v === 'object' ? Object.fromEntries(Object.keys(v).sort().map((k) => [k, canon((v as Record<string, unknown>)[k])])) : v;
  return createHash('sha256').update(JSON.stringify(canon(body))).digest('hex');
}

class KeyTaken extends Error {}

/**
 * Stores `spec` as a new job under (tenant, key), or returns the job the key already names (replayed). A
 * key reused with a different body: KilnError `job.idempotency_key_reused` (HTTP 422).
 */
export async function submitOnce(db: Db, spec: JobSpec, key: string, hash: string, windowMs = IDEMPOTENCY_WINDOW_MS): Promise<{ job: Job; replayed: boolean }> {
  const live = sql<boolean>`created_at > now() - make_interval(secs => ${windowMs / 1000})`;
  const replay = async (): Promise<{ job: Job; replayed: boolean } | undefined> => {
    const row = await db.selectFrom('job_submissions').select(['request_hash', 'job_id']).where('tenant', '=', spec.tenant).where('idempotency_key', '=', key).where(live).executeTakeFirst();
    if (!row) return undefined;
    if (row.request_hash !== hash) {
      throw new KilnError('job.idempotency_key_reused', `the Idempotency-Key "${key}" was used for a different job submission`, {
        hint: 'use a new key for a new submission; a retry must send the same body as the first request',
      });
    }
    const job = await getJob(db, Number(row.job_id));
    return job ? { job, replayed: true } : undefined;
  };
  const first = await replay();
  if (first) return first;
  try {
    return await db.transaction().execute(async (tx) => {
      const [job] = await insertJobs(tx, [spec]);
      // A concurrent request with the same key waits here for the other's commit, then finds the key taken
      // (an expired key is taken over).
      const won = await tx
        .insertInto('job_submissions')
        .values({ tenant: spec.tenant, idempotency_key: key, request_hash: hash, job_id: job!.id })
        .onConflict((oc) =>
          oc
            .columns(['tenant', 'idempotency_key'])
            .doUpdateSet({ request_hash: hash, job_id: job!.id, created_at: sql`now()` })
            .where(sql<boolean>`job_submissions.created_at <= now() - make_interval(secs => ${windowMs / 1000})`),
        )
        .returning('job_id')
        .executeTakeFirst();
      if (!won) throw new KeyTaken();
      return { job: job!, replayed: false };
    });
  } catch (e) {
    if (!(e instanceof KeyTaken)) throw e;
    const again = await replay();
    if (again) return again;
    throw new KilnError('job.idempotency_key_busy', `a request with the Idempotency-Key "${key}" is being processed`, { kind: 'unavailable', hint: 'retry in a moment' });
  }
}

/** Forgets keys older than the window (the leader calls it now and then). */
export async function purgeIdempotencyKeys(db: Db, windowMs = IDEMPOTENCY_WINDOW_MS): Promise<number> {
  const r = await db.deleteFrom('job_submissions').where(sql<boolean>`created_at <= now() - make_interval(secs => ${windowMs / 1000})`).executeTakeFirst();
  return Number(r.numDeletedRows);
}
