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
      metadata: 'read',
    },
    default_events: ['workflow_job'],
  };
}
