/** Power API: wake or sleep a host by hand; the policy, the leader's last decision and recent requests. */
import { Type } from '@sinclair/typebox';
import { KilnError } from '../../core/errors.ts';
import type { PowerPolicy } from '../../core/power.ts';
import { findHost } from '../../store/hosts.ts';
import { listPowerRequests } from '../../store/power.ts';
import type { RouteDef } from '../http/routes.ts';
import type { ServerContext } from '../context.ts';
import type { PowerManager } from './manager.ts';

const RefParams = Type.Object({ ref: Type.String({ minLength: 1, maxLength: 100 }) });

/** JSON has no Infinity: a schedule that keeps every host awake says "all". */
const policyJson = (p: PowerPolicy) => ({
  ...p,
  pools: p.pools.map((pool) => ({ ...pool, schedules: pool.schedules.map((s) => ({ ...s, minAwake: Number.isFinite(s.minAwake) ? s.minAwake : 'all' })) })),
});

export function powerRoutes(deps: { ctx: ServerContext; power: PowerManager; policy: PowerPolicy }): RouteDef[] {
  const db = deps.ctx.store.db;
  const need = async (ref: string) => {
    const h = await findHost(db, ref);
    if (!h) throw new KilnError('host.not_found', `no host named or numbered "${ref}"`, { hint: 'list hosts with `kiln hosts ls`' });
    return h;
  };
  return [
    {
      method: 'POST',
      url: '/v1/hosts/:ref/wake',
      tag: 'hosts',
      summary: 'Wake an asleep host (also one the power manager gave up on); jobs wait for it meanwhile',
      permission: 'operate',
      schema: { params: RefParams },
      async handler(req) {
        const h = await need((req.params as { ref: string }).ref);
        if (h.state !== 'asleep') {
          throw new KilnError('host.bad_transition', `host ${h.name} is ${h.state}, not asleep`, { hint: h.state === 'waking' ? 'it is being woken already' : 'only an asleep host can be woken' });
        }
        const r = await deps.power.wake(h.id);
        if (!r) throw new KilnError('host.bad_transition', `host ${h.name} has a sleep or wake under way`, { hint: 'wait for it to finish (kiln hosts ls)' });
        return { host: h.name, request: r };
      },
    },
    {
      method: 'POST',
      url: '/v1/hosts/:ref/sleep',
      tag: 'hosts',
      summary: 'Put a host to sleep: it drains (running jobs finish), then runs its sleep command',
      permission: 'operate',
      schema: { params: RefParams },
      async handler(req) {
        const h = await need((req.params as { ref: string }).ref);
        if (!h.power || h.power.driver === 'none') {
          throw new KilnError('host.bad_transition', `host ${h.name} has no power driver, so it cannot sleep`, { hint: 'configure power.driver and power.sleepCommand on its agent (docs/power.md)' });
        }
        if (h.state !== 'online') throw new KilnError('host.bad_transition', `host ${h.name} is ${h.state}; only an online host can be put to sleep`, { hint: h.drainRequested ? 'uncordon it first' : 'list hosts with `kiln hosts ls`' });
        const r = await deps.power.sleep(h.id);
        if (!r) throw new KilnError('host.bad_transition', `host ${h.name} cannot sleep now (drained by an operator, disconnected, or a sleep or wake is under way)`, { hint: 'see `kiln hosts ls`' });
        return { host: h.name, request: r };
      },
    },
    {
      method: 'GET',
      url: '/v1/power',
      tag: 'hosts',
      summary: 'The sleep policy, the leader’s last decision and the most recent sleep and wake requests',
      permission: 'read',
      schema: { querystring: Type.Object({ limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000 })) }, { additionalProperties: false }) },
      async handler(req) {
        const limit = (req.query as { limit?: number }).limit ?? 100;
        return { policy: policyJson(deps.policy), lastDecision: deps.power.lastDecision() ?? null, requests: await listPowerRequests(db, limit) };
      },
    },
  ];
}
