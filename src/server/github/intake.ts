/**
 * Webhook intake, on every replica: check the headers and the signature, store the delivery (the durable
 * queue), answer 202 (200 for a duplicate or a ping), and kick the loop. Nothing else happens here: the
 * leader processes stored deliveries (ingest.ts).
 */
import type { FastifyInstance } from 'fastify';
import { KilnError, isKilnError } from '../../core/errors.ts';
import { insertDelivery } from '../../store/github-deliveries.ts';
import { errorBody } from '../http/http-errors.ts';
import { WEBHOOK_PATH } from './manifest.ts';
import type { GitHubParts } from './parts.ts';
import { verifySignature } from './signature.ts';

const BODY_LIMIT = 25 * 1024 * 1024;

export async function registerWebhook(app: FastifyInstance, p: GitHubParts, kick: () => void): Promise<void> {
  const { metrics, log, db, config } = p;
  const secrets = () => config.webhookSecrets.map((s) => s.reveal());
  await app.register(async (child) => {
    child.removeAllContentTypeParsers();
    child.addContentTypeParser('application/json', { parseAs: 'buffer', bodyLimit: BODY_LIMIT }, (_req, body, done) => done(null, body));
    child.addContentTypeParser('*', { parseAs: 'buffer', bodyLimit: BODY_LIMIT }, (_req, _body, done) =>
      done(new KilnError('request.unsupported_media', 'GitHub webhooks are JSON (content type application/json)'), undefined),
    );
    child.setErrorHandler((e: unknown, _req, reply) => {
      metrics.deliveries.inc({ result: 'refused' });
      const code = (e as { code?: string }).code;
      const { status, body } = errorBody(isKilnError(e) ? e : code === 'FST_ERR_CTP_BODY_TOO_LARGE' ? new KilnError('request.too_large', 'the delivery exceeds 25 MB') : e);
      if (status >= 500) log.error({ err: e }, 'webhook intake failed');
      void reply.code(status).send(body);
    });
    child.post(WEBHOOK_PATH, async (req, reply) => {
      const h = (n: string) => {
        const v = req.headers[n];
        return typeof v === 'string' && v.length > 0 ? v : undefined;
      };
      const event = h('x-github-event');
      const delivery = h('x-github-delivery');
      const signature = h('x-hub-signature-256');
      const missing = [!event && 'X-GitHub-Event', !delivery && 'X-GitHub-Delivery', !signature && 'X-Hub-Signature-256'].filter(Boolean);
      if (!event || !delivery || !signature) throw new KilnError('request.missing_header', `the delivery lacks ${missing.join(', ')}`);
      const body = req.body;
      if (!Buffer.isBuffer(body)) throw new KilnError('request.unsupported_media', 'GitHub webhooks are JSON (content type application/json)');
      if (!verifySignature(secrets(), body, signature)) {
        log.warn({ delivery, event }, 'webhook refused: bad signature');
        throw new KilnError('auth.invalid', 'the X-Hub-Signature-256 signature does not match any configured webhook secret', {
          hint: 'the App webhook secret and KILN_GITHUB_WEBHOOK_SECRET must be the same',
        });
      }
      if (event === 'ping') {
        metrics.deliveries.inc({ result: 'ping' });
        return reply.code(200).send({ ok: true });
      }
      if (event !== 'workflow_job') throw new KilnError('request.unsupported_event', `kiln handles workflow_job events, not ${event}`, { hint: 'subscribe the App to "Workflow job" only' });
      let payload: unknown;
      try {
        payload = JSON.parse(body.toString('utf8'));
      } catch {
        throw new KilnError('request.bad_json', 'the delivery body is not valid JSON');
      }
      const action = typeof (payload as { action?: unknown }).action === 'string' ? (payload as { action: string }).action : null;
      const fresh = await insertDelivery(db, { deliveryId: delivery, event, action, hookId: h('x-github-hook-id') ?? null, payload: body.toString('utf8') });
      if (!fresh) {
        metrics.deliveries.inc({ result: 'duplicate' });
        return reply.code(200).send({ duplicate: true });
      }
      metrics.deliveries.inc({ result: 'accepted' });
      kick();
      return reply.code(202).send({ accepted: true });
    });
  });
}
