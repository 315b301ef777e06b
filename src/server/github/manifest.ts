/** The GitHub App manifest kiln needs (https://docs.github.com "Registering a GitHub App from a manifest"). Pure. */

export interface ManifestOptions {
  name: string;
  /** The kiln server's public base URL; the webhook goes to <url>/v1/github/webhook. */
  url: string;
  /** Org-level runners need the organization permission; it is included unless asked otherwise. */
  organizationRunners?: boolean;
  /** Where GitHub sends the browser (with ?code=…) after the App is created from the manifest. */
  redirectUrl?: string;
}

export const WEBHOOK_PATH = '/v1/github/webhook';

export function appManifest(o: ManifestOptions): Record<string, unknown> {
  const base = o.url.replace(/\/+$/, '');
  return {
    name: o.name,
    url: base,
    hook_attributes: { url: `${base}${WEBHOOK_PATH}`, active: true },
    ...(o.redirectUrl ? { redirect_url: o.redirectUrl } : {}),
    public: false,
    default_permissions: {
      administration: 'write',
      ...(o.organizationRunners === false ? {} : { organization_self_hosted_runners: 'write' }),
      actions: 'read',
      // Git refs (GET …/git/ref/{ref}): whether a push's head_branch names a branch or a tag (docs/caches.md).
      contents: 'read',
      metadata: 'read',
    },
    default_events: ['workflow_job'],
  };
}

/** The webhook endpoint as an OpenAPI path item (it sits outside the route table: it needs the raw body). */
export function webhookOpenApi(): Record<string, Record<string, unknown>> {
  const header = (name: string, description: string) => ({ name, in: 'header', required: true, schema: { type: 'string' }, description });
  const answer = (description: string) => ({ description, content: { 'application/json': { schema: { type: 'object' } } } });
  return {
    [WEBHOOK_PATH]: {
      post: {
        summary: "GitHub App webhook: workflow_job deliveries (and ping), verified by X-Hub-Signature-256 on the raw body",
        tags: ['github'],
        security: [],
        parameters: [
          header('X-GitHub-Event', 'workflow_job or ping; other events are refused (400)'),
          header('X-GitHub-Delivery', 'the delivery id; a repeated id is answered 200 {"duplicate": true} and not processed again'),
          header('X-Hub-Signature-256', 'sha256=<HMAC-SHA256 of the raw body with the webhook secret>; the previous secret is accepted during a rotation'),
        ],
        requestBody: { required: true, content: { 'application/json': { schema: { type: 'object', description: 'the workflow_job event payload, at most 25 MB' } } } },
        responses: {
          '200': answer('ping answered, or a duplicate delivery'),
          '202': answer('accepted: stored durably, processed asynchronously'),
          '400': answer('a header is missing, the event is not workflow_job, or the body is not JSON'),
          '401': answer('the signature matches no configured webhook secret'),
          '408': answer('the body did not arrive within the body deadline (KILN_BODY_TIMEOUT, 30 s)'),
          '413': answer('the body exceeds 25 MiB (GitHub sends nothing larger); a larger Content-Length is refused before the body is read'),
          '415': answer('the content type is not application/json'),
          '503': answer('the server is receiving too many large bodies at once (KILN_BODY_BUDGET); retry (Retry-After: 1)'),
        },
      },
    },
  };
}
