/** Power API: wake or sleep a host by hand; the policy, the leader's last decision and recent requests. */
import { API } from '../../core/http-contract.ts';
import { KilnError } from '../../core/errors.ts';
import type { PowerPolicy } from '../../core/power.ts';
import { findHost } from '../../store/hosts.ts';
import { listPowerRequests } from '../../store/power.ts';
import { defineRoute, type RouteDef } from '../http/routes.ts';
import type { ServerContext } from '../context.ts';
import type { PowerManager } from './manager.ts';

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
    defineRoute(
      API.wakeHost,
      { tag: 'hosts', summary: 'Wake an asleep host (also one the power manager gave up on); jobs wait for it meanwhile', permission: 'operate' },
      async (req) => {
        const h = await need(req.params.ref);
        if (h.state !== 'asleep') {
          throw new KilnError('host.bad_transition', `host ${h.name} is ${h.state}, not asleep`, { hint: h.state === 'waking' ? 'it is being woken already' : 'only an asleep host can be woken' });
        }
        const r = await deps.power.wake(h.id);
        if (!r) throw new KilnError('host.bad_transition', `host ${h.name} has a sleep or wake under way`, { hint: 'wait for it to finish (kiln hosts ls)' });
        return { host: h.name, request: r };
      },
    ),
    defineRoute(
      API.sleepHost,
      { tag: 'hosts', summary: 'Put a host to sleep: it drains (running jobs finish), then runs its sleep command', permission: 'operate' },
      async (req) => {
        const h = await need(req.params.ref);
        if (!h.power || h.power.driver === 'none') {
          throw new KilnError('host.bad_transition', `host ${h.name} has no power driver, so it cannot sleep`, { hint: 'configure power.driver and power.sleepCommand on its agent (docs/power.md)' });
        }
        if (h.state !== 'online') throw new KilnError('host.bad_transition', `host ${h.name} is ${h.state}; only an online host can be put to sleep`, { hint: h.drainRequested ? 'uncordon it first' : 'list hosts with `kiln hosts ls`' });
        const r = await deps.power.sleep(h.id);
        if (!r) throw new KilnError('host.bad_transition', `host ${h.name} cannot sleep now (drained by an operator, disconnected, or a sleep or wake is under way)`, { hint: 'see `kiln hosts ls`' });
        return { host: h.name, request: r };
      },
    ),
    defineRoute(API.powerStatus, { tag: 'hosts', summary: 'The sleep policy, the leader’s last decision and the most recent sleep and wake requests', permission: 'read' }, async (req) => {
      const limit = req.query.limit ?? 100;
      return { policy: policyJson(deps.policy), lastDecision: deps.power.lastDecision() ?? null, requests: await listPowerRequests(db, limit) };
    }),
  ];
}
