/**
 * GitHub webhook deliveries (the durable intake queue) and the per-action keys that dedupe one job action
 * arriving through several hooks or delivery ids.
 */
import type { Db, Tx } from './store.ts';

type Q = Db | Tx;

export interface NewDelivery {
  deliveryId: string;
  event: string;
  action: string | null;
  hookId: string | null;
  /** The raw JSON body as received. */
  payload: string;
}

/** Stores a delivery; false when its id is already stored (GitHub sent it again). */
export async function insertDelivery(db: Q, d: NewDelivery): Promise<boolean> {
  const r = await db
    .insertInto('github_deliveries')
    .values({ delivery_id: d.deliveryId.slice(0, 200), event: d.event, action: d.action, hook_id: d.hookId, payload: d.payload })
    .onConflict((oc) => oc.column('delivery_id').doNothing())
    .returning('delivery_id')
    .executeTakeFirst();
  return r !== undefined;
}

/** Locks up to `limit` unprocessed deliveries, oldest first (other replicas skip them). */
export async function claimPendingDeliveries(tx: Tx, limit: number): Promise<{ deliveryId: string; payload: unknown }[]> {
  const rows = await tx
    .selectFrom('github_deliveries')
    .select(['delivery_id', 'payload'])
    .where('status', '=', 'pending')
    .orderBy('received_at')
    .limit(limit)
    .forUpdate()
    .skipLocked()
    .execute();
  return rows.map((r) => ({ deliveryId: r.delivery_id, payload: r.payload }));
}

export async function markDeliveryDone(tx: Q, deliveryId: string, outcome: string, at: Date): Promise<void> {
  await tx.updateTable('github_deliveries').set({ status: 'done', outcome, processed_at: at }).where('delivery_id', '=', deliveryId).execute();
}

/** The ids among `ids` that are stored. */
export async function knownDeliveryIds(db: Q, ids: string[]): Promise<Set<string>> {
  if (ids.length === 0) return new Set();
  const rows = await db.selectFrom('github_deliveries').select('delivery_id').where('delivery_id', 'in', [...new Set(ids)]).execute();
  return new Set(rows.map((x) => x.delivery_id));
}

/** Processed deliveries received before `deliveriesBefore` and action keys recorded before `actionsBefore` go. */
export async function pruneDeliveries(db: Q, deliveriesBefore: Date, actionsBefore: Date): Promise<void> {
  await db.deleteFrom('github_deliveries').where('status', '=', 'done').where('received_at', '<', deliveriesBefore).execute();
  await db.deleteFrom('github_job_actions').where('at', '<', actionsBefore).execute();
}

/** Records that a job took an action; false when this action of this job attempt was already recorded. */
export async function recordJobAction(tx: Q, a: { jobId: number; runAttempt: number; action: string; deliveryId: string }): Promise<boolean> {
  const r = await tx
    .insertInto('github_job_actions')
    .values({ job_id: a.jobId, run_attempt: a.runAttempt, action: a.action, delivery_id: a.deliveryId })
    .onConflict((oc) => oc.columns(['job_id', 'run_attempt', 'action']).doNothing())
    .returning('job_id')
    .executeTakeFirst();
  return r !== undefined;
}

/** Unprocessed deliveries (a metric). */
export async function countPendingDeliveries(db: Q): Promise<number> {
  const r = await db
    .selectFrom('github_deliveries')
    .select((e) => e.fn.countAll<string>().as('n'))
    .where('status', '=', 'pending')
    .executeTakeFirst();
  return Number(r?.n ?? 0);
}
