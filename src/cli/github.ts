/** `kiln github app-manifest | jobs | runners | usage`. */
import type { Command } from 'commander';
import { KilnError } from '../core/errors.ts';
import { API } from '../core/http-contract.ts';
import { appManifest } from '../server/github/manifest.ts';
import { addClientOptions, clientFrom, type ClientFlags } from './fleet-client.ts';
import { table, type Output } from './output.ts';

export function registerGitHub(program: Command, out: () => Output): void {
  const gh = program.command('github').description('GitHub Actions: the App manifest, job decisions, runners, usage');
  gh.command('app-manifest')
    .description('print the GitHub App manifest kiln needs (permissions, the workflow_job event, the webhook URL)')
    .requiredOption('--url <url>', "the kiln server's public base URL (GitHub posts webhooks to <url>/v1/github/webhook)")
    .option('--name <name>', 'the App name (unique on GitHub)', 'kiln')
    .option('--repo-only', 'leave out the organization permission (repository-level runners only)')
    .option('--redirect-url <url>', 'where GitHub sends the browser with ?code=… once the App exists')
    .action((f: { url: string; name: string; repoOnly?: boolean; redirectUrl?: string }) => {
      let u: URL;
      try {
        u = new URL(f.url);
      } catch {
        throw new KilnError('input.bad_url', `"${f.url}" is not a URL`, { hint: 'pass the https:// address GitHub can reach your kiln server at' });
      }
      if (u.protocol !== 'https:' && u.protocol !== 'http:') throw new KilnError('input.bad_url', `"${f.url}" is not an http(s) URL`);
      out().data(JSON.stringify(appManifest({ name: f.name, url: f.url, organizationRunners: !f.repoOnly, ...(f.redirectUrl ? { redirectUrl: f.redirectUrl } : {}) }), null, 2));
    });
  addClientOptions(gh.command('jobs').description("GitHub jobs kiln saw and its decision (accepted, ignored, refused with the reason)"))
    .option('--refused', 'only refused jobs')
    .action(async (f: ClientFlags & { refused?: boolean }) => {
      const r = await clientFrom(f).call(API.githubJobs, { query: f.refused ? { decision: 'refused' } : {} });
      out().data(table([['JOB', 'REPO', 'LABELS', 'STATE', 'DECISION', 'REASON'], ...r.jobs.map((j) => [`${j.jobId}/${j.runAttempt}`, j.repo, j.labels.join(','), j.state, j.decision, j.reason ? `${j.reason.code}: ${j.reason.message}` : '-'])]));
    });
  addClientOptions(gh.command('runners').description("kiln's runners and their VMs"))
    .option('--all', 'include runners that are gone')
    .action(async (f: ClientFlags & { all?: boolean }) => {
      const r = await clientFrom(f).call(API.githubRunners, { query: f.all ? { all: true } : {} });
      out().data(table([['NAME', 'STATE', 'SCOPE', 'LABELS', 'VM JOB', 'NOTE'], ...r.runners.map((x) => [x.name, x.state, x.scope, x.labels.join(','), String(x.kilnJobId ?? '-'), x.lastError ?? '-'])]));
    });
  addClientOptions(gh.command('usage').description('usage records per GitHub job (JSON lines)'))
    .option('--repo <owner/repo>', 'one repository')
    .action(async (f: ClientFlags & { repo?: string }) => {
      const r = await clientFrom(f).call(API.githubUsage, { query: f.repo ? { repo: f.repo } : {} });
      for (const u of r.usage) out().data(JSON.stringify(u));
    });
}
