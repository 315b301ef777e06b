/**
 * Webhook intake, on every replica: check the headers and the signature, store the delivery (the durable
 * queue), answer 202 (200 for a duplicate or a ping), and kick the loop. Nothing else happens here: the
 * leader processes stored deliveries (ingest.ts).
 */
import type { FastifyInstance } from 'fastify';
import { KilnError, isKilnError } from '../../core/errors.ts';
import { insertDelivery } from '../../store/github-deliveries.ts';
import { errorBody } from '../http/http-errors.ts';
import { refusalHeaders } from '../http/body-intake.ts';
import { findUnstorableString } from '../http/strict-input.ts';
import { WEBHOOK_PATH } from './manifest.ts';
import type { GitHubParts } from './parts.ts';
import { verifySignature } from './signature.ts';

/**
 * GitHub caps webhook payloads at 25 MB (it sends nothing larger), so nothing GitHub sends is refused. A
 * workflow_job delivery is a few kB; what keeps many large bodies from filling memory is the server's body
 * budget (http/body-intake.ts), not this cap.
 */
export const WEBHOOK_BODY_LIMIT = 25 * 1024 * 1024;

export async function registerWebhook(app: FastifyInstance, p: GitHubParts, kick: () => void): Promise<void> {
  const { metrics, log, db, config } = p;
  const secrets = () => config.webhookSecrets.map((s) => s.reveal());
  await app.register(async (child) => {
    child.removeAllContentTypeParsers();
    // Read as it streams: a declared length over the cap is a 413 before any byte is read, a longer
    // chunked body is cut off at the cap, and the bytes count against the server's body budget.
    child.addContentTypeParser('application/json', (req, payload, done) => {
      p.ctx.bodies.read(req.raw, payload, WEBHOOK_BODY_LIMIT).then(
        (body) => done(null, body),
        (e: Error) => done(e, undefined),
      );
    });
    child.addContentTypeParser('*', (_req, _payload, done) => done(new KilnError('request.unsupported_media', 'GitHub webhooks are JSON (content type application/json)'), undefined));
    child.setErrorHandler((e: unknown, req, reply) => {
      metrics.deliveries.inc({ result: 'refused' });
      const { status, body } = errorBody(e);
      if (status >= 500) log.error({ err: e }, 'webhook intake failed');
      const refusal = isKilnError(e) ? refusalHeaders(req.raw, e.code) : undefined;
      if (refusal) void reply.headers(refusal);
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
      // A delivery is stored as jsonb: it must be an object, and PostgreSQL stores neither NUL nor a lone
      // surrogate (found by the fuzz: each was a 500). GitHub sends neither; such a body is refused (400).
      if (payload === null || typeof payload !== 'object' || Array.isArray(payload)) throw new KilnError('request.bad_payload', 'the delivery body is not a JSON object');
      const unstorable = findUnstorableString(payload);
      if (unstorable !== undefined) throw new KilnError('request.bad_string', `the delivery holds NUL or an unpaired UTF-16 surrogate at ${unstorable.slice(0, 200)}`);
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
