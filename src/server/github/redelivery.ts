/**
 * Deliveries GitHub failed to make (kiln down, a network fault) are asked for again: GitHub does not retry
 * on its own. A delivery kiln already stored is never asked for; one asked for is not asked again for five
 * redelivery intervals.
 */
import { knownDeliveryIds } from '../../store/github-deliveries.ts';
import type { GitHubParts } from './parts.ts';
import { DELIVERY_RETENTION_MS } from './reconciler.ts';

export interface Redelivery {
  recoverLostDeliveries(): Promise<void>;
}

export function makeRedelivery(p: GitHubParts): Redelivery {
  const asked = new Map<string, number>();
  return {
    async recoverLostDeliveries() {
      await p.step('recovering lost webhooks', async () => {
        const failed = await p.api.listFailedDeliveries(p.now() - DELIVERY_RETENTION_MS);
        const wanted = failed.filter((f) => f.event === 'workflow_job');
        if (wanted.length === 0) return;
        const have = await knownDeliveryIds(p.db, wanted.map((w) => w.guid));
        for (const f of wanted) {
          if (have.has(f.guid) || p.now() - (asked.get(f.guid) ?? -Infinity) < p.config.redeliverMs * 5) continue;
          asked.set(f.guid, p.now());
          p.log.info({ delivery: f.guid, action: f.action }, 'asking GitHub to redeliver a lost webhook');
          await p.api.redeliver(f.id);
        }
        for (const [guid, at] of asked) if (p.now() - at > DELIVERY_RETENTION_MS) asked.delete(guid);
      });
    },
  };
}
