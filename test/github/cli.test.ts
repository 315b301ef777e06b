// `kiln github app-manifest` through the real CLI entry: the manifest a user pastes into GitHub.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('../../', import.meta.url));
const kiln = (args: string[]) => spawnSync(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', ...args], { cwd: root, encoding: 'utf8' });

test('kiln github app-manifest prints the permissions, the event and the webhook URL; bad input is a clear error', () => {
  const r = kiln(['github', 'app-manifest', '--url', 'https://ci.example.com', '--name', 'kiln-acme']);
  assert.equal(r.status, 0, r.stderr);
  const m = JSON.parse(r.stdout) as { name: string; hook_attributes: { url: string; active: boolean }; default_permissions: Record<string, string>; default_events: string[]; public: boolean };
  assert.equal(m.name, 'kiln-acme');
  assert.deepEqual(m.hook_attributes, { url: 'https://ci.example.com/v1/github/webhook', active: true });
  assert.deepEqual(m.default_permissions, { administration: 'write', organization_self_hosted_runners: 'write', actions: 'read', contents: 'read', metadata: 'read' });
  assert.deepEqual(m.default_events, ['workflow_job']);
  assert.equal(m.public, false);
  assert.equal((m as { redirect_url?: string }).redirect_url, undefined);
  const repoOnly = JSON.parse(kiln(['github', 'app-manifest', '--url', 'https://ci.example.com', '--repo-only', '--redirect-url', 'https://ci.example.com/done']).stdout) as { default_permissions: Record<string, string>; redirect_url: string };
  assert.equal(repoOnly.default_permissions.organization_self_hosted_runners, undefined);
  assert.equal(repoOnly.redirect_url, 'https://ci.example.com/done');
  const bad = kiln(['github', 'app-manifest', '--url', 'not a url']);
  assert.notEqual(bad.status, 0);
  assert.match(bad.stderr, /not a URL/);
});
