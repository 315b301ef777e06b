/**
 * The dashboard in a real Chromium (Debian's package, driven over the DevTools protocol by playwright-core;
 * nothing downloaded), against a real server on a real store with a memory-driver agent and GitHub
 * configured against the GitHub double. Screenshots of every page go to the test's output directory
 * ($KILN_TEST_OUTPUT_DIR or test-output/, under dashboard/), kept as CI artifacts.
 */
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium, type Browser, type Page } from 'playwright-core';
import { buildDashboard } from '../../scripts/build-dashboard.mjs';
import { makeMemoryDriver, type GuestProgram } from '../../src/vm/memory-driver.ts';
import { makeAgent } from '../../src/agent/agent.ts';
import { makeMemoryImageResolver } from '../../src/agent/images.ts';
import { quietLogger } from '../server/harness.ts';
import { createToken } from '../../src/store/tokens.ts';
import { connectHost, disconnectHost } from '../../src/store/hosts.ts';
import { FLEET_ROWS_SHOWN } from '../../src/dashboard/pages/fleet.ts';
import { JOBS_MAX, JOBS_SHOWN } from '../../src/dashboard/pages/jobs.ts';
import { startGitHubHarness, until, type GitHubHarness } from '../github/support/harness.ts';
import { standInRunner, STAND_IN_NAME } from '../github/support/stand-in-runner.ts';
import { REPO, runKiln, makeTestDataDir } from '../support/kiln.ts';

const CHROMIUM = process.env.KILN_CHROMIUM ?? '/usr/bin/chromium';
const OUT = join(process.env.KILN_TEST_OUTPUT_DIR ?? join(REPO, 'test-output'), 'dashboard');
const skip = existsSync(CHROMIUM) ? false : `${CHROMIUM} is missing (apt-get install chromium, or kiln setup --with-test-deps)`;

let h: GitHubHarness;
let browser: Browser;
let assets: string;
let viewer: string;
/** A viewer of the GitHub tenant: GitHub's records belong to it (tenancy, docs/security.md). */
let githubViewer: string;
/** Usage across tenants (the default tenant's jobs and GitHub's runner VMs) is an admin's view. */
let adminViewer: string;
let operator: string;
const gates = new Map<string, () => void>();
const gateOpen = new Map<string, Promise<void>>();
const gate = (name: string) => {
  if (!gateOpen.has(name)) gateOpen.set(name, new Promise<void>((r) => gates.set(name, r)));
  return gateOpen.get(name)!;
};

/** `gate NAME` waits until the test opens it; `paint` prints coloured lines as a build tool would. */
const programs: Record<string, GuestProgram> = {
  [STAND_IN_NAME]: standInRunner,
  gate: async ({ args, signal }) => {
    await Promise.race([gate(args[0] ?? ''), new Promise((r) => signal.addEventListener('abort', r, { once: true }))]);
    return 0;
  },
  paint: async ({ stdout, stderr }) => {
    stdout('\x1b[1;32mPASS\x1b[0m unit tests\n');
    stderr('\x1b[31mwarning:\x1b[0m deprecated flag\n');
    return 0;
  },
};

const shot = (page: Page, name: string) => page.screenshot({ path: join(OUT, `${name}.png`), fullPage: true });

before(async () => {
  if (skip) return;
  mkdirSync(OUT, { recursive: true });
  assets = mkdtempSync(join(tmpdir(), 'kiln-dashboard-'));
  await buildDashboard(assets);
  h = await startGitHubHarness({ dashboardDir: assets, driver: makeMemoryDriver({ cpus: 64, memoryBytes: 256 * 1024 ** 3, programs }) });
  viewer = (await createToken(h.store.db, { name: 'wall screen', role: 'viewer' })).secret;
  githubViewer = (await createToken(h.store.db, { name: 'github screen', role: 'viewer', tenant: 'github' })).secret;
  adminViewer = (await createToken(h.store.db, { name: 'fleet admin', role: 'admin' })).secret;
  operator = (await createToken(h.store.db, { name: 'ops', role: 'operator' })).secret;
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu'] });
});

after(async () => {
  if (skip) return;
  for (const open of gates.values()) open();
  await browser?.close();
  await h?.close();
  rmSync(assets, { recursive: true, force: true });
});

async function signedIn(page: Page, token: string): Promise<void> {
  await page.goto(h.url);
  await page.getByLabel('kiln token').fill(token);
  await page.keyboard.press('Enter');
  await page.locator('[data-live="on"]').waitFor();
}

test('the dashboard in Chromium: sign-in, live jobs and logs, a CLI drain, usage, GitHub', { skip }, async () => {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const consoleErrors: string[] = [];
  page.on('console', (m) => m.type() === 'error' && consoleErrors.push(m.text()));
  page.on('pageerror', (e) => consoleErrors.push(e.message));

  // A bad token is refused with the server's reason; a viewer token signs in.
  await page.goto(h.url);
  await page.getByLabel('kiln token').fill('kiln_api_not-a-real-token');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('alert').filter({ hasText: 'Sign-in refused' }).waitFor();
  assert.match(await page.getByRole('alert').innerText(), /unknown or revoked/);
  await shot(page, 'sign-in-refused');
  await signedIn(page, viewer);
  assert.match(await page.locator('.who').innerText(), /wall screen \(viewer\)/);

  // Fleet: the agent's host, online.
  await page.locator('[data-host-state="host-1"] .badge', { hasText: 'online' }).waitFor();
  await shot(page, 'fleet');

  // A job submitted through the API appears on the jobs page and moves through its states, no reload.
  await page.getByRole('link', { name: 'Jobs' }).click();
  await page.getByRole('heading', { name: 'Jobs' }).waitFor();
  await page.evaluate(() => ((window as unknown as { __noReload: boolean }).__noReload = true));
  const job = await h.client.request<{ id: number }>('POST', '/v1/jobs', { labels: ['kiln-2cpu-4gb'], command: ['sh', '-c', 'echo building; paint; gate one; echo done'] });
  await page.locator(`[data-job-state="${job.id}"] .badge`, { hasText: 'running' }).waitFor();
  await shot(page, 'jobs');

  // Its page: timeline, VM size and host, the live log with colours rendered.
  await page.getByRole('link', { name: `#${job.id}` }).click();
  await page.getByRole('heading', { name: `Job #${job.id}` }).waitFor();
  const log = page.getByRole('log');
  await log.getByText('PASS').waitFor();
  assert.equal(await log.locator('.ansi-fg-2.ansi-bold').innerText(), 'PASS');
  assert.equal(await log.locator('.stderr.ansi-fg-1').innerText(), 'warning:');
  assert.doesNotMatch(await log.innerText(), /\x1b|\[0m/);
  assert.match(await page.locator('.facts').first().innerText(), /amd64 · 2 CPU · 4 GiB memory/);
  assert.match(await page.locator('.facts').first().innerText(), /host-1/);
  gates.get('one')!();
  await page.locator(`dd[data-job-state="${job.id}"] .badge`, { hasText: 'succeeded' }).waitFor();
  await log.getByText('done').waitFor();
  await page.getByText(/Log complete/).waitFor();
  await shot(page, 'job');
  assert.equal(await page.evaluate(() => (window as unknown as { __noReload?: boolean }).__noReload), true, 'the page was not reloaded');

  // Search is the server's (every stored job, not only the newest page): text in the command finds this job alone.
  const other = await h.client.request<{ id: number }>('POST', '/v1/jobs', { command: ['sh', '-c', 'echo unrelated'] });
  await page.getByRole('link', { name: 'Jobs' }).click();
  await page.getByRole('searchbox').fill('gate one');
  await page.getByRole('button', { name: 'Filter' }).click();
  const results = page.getByRole('table', { name: /matching “gate one”/ });
  await results.getByRole('link', { name: `#${job.id}` }).waitFor();
  assert.equal(await results.locator('tbody tr').count(), 1, 'only the matching job');
  assert.equal(await results.getByRole('link', { name: `#${other.id}` }).count(), 0);

  // A GitHub job (through the double and a runner VM) and a refused one show on the GitHub page.
  const gh = await h.double.queueJob('acme/app', ['self-hosted', 'kiln-4cpu-8gb']);
  await h.double.queueJob('acme/app', ['self-hosted', 'kiln-bogus-label']);
  await until('the GitHub job completed', () => h.double.jobs.get(gh.id)?.status === 'completed', 30_000);
  // GitHub's records belong to the GitHub tenant: the default tenant's viewer may not read them, its viewer may.
  const ghPage = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  try {
    await signedIn(ghPage, githubViewer);
    await ghPage.getByRole('link', { name: 'GitHub' }).click();
    await ghPage.getByRole('table', { name: /Refused GitHub jobs/ }).getByText('acme/app').first().waitFor();
    await shot(ghPage, 'github');
  } finally {
    await ghPage.close();
  }
  const ghJobsAs = async (token: string) => ((await (await fetch(`${h.url}/v1/github/jobs`, { headers: { authorization: `Bearer ${token}` } })).json()) as { jobs: unknown[] }).jobs.length;
  assert.equal(await ghJobsAs(viewer), 0, "another tenant's viewer lists no GitHub records");
  assert.ok((await ghJobsAs(githubViewer)) >= 2, "the GitHub tenant's viewer lists its records");

  // A host drained through the CLI changes on the fleet page.
  await page.getByRole('link', { name: 'Fleet' }).click();
  await page.locator('[data-host-state="host-1"] .badge', { hasText: 'online' }).waitFor();
  const data = makeTestDataDir();
  try {
    const r = await runKiln(data.dir, ['hosts', 'drain', 'host-1'], { KILN_SERVER: h.url, KILN_TOKEN: operator });
    assert.equal(r.code, 0, r.stderr.toString());
  } finally {
    data.cleanup();
  }
  await page.locator('[data-host-state="host-1"] .badge', { hasText: 'draining' }).waitFor();
  await shot(page, 'fleet-draining');

  // Queue: a job no host can take says why.
  const stuck = await h.client.request<{ id: number }>('POST', '/v1/jobs', { labels: ['kiln-arm64'], command: ['true'] });
  await page.getByRole('link', { name: 'Queue' }).click();
  await page.getByText(/no host of architecture arm64/).waitFor();
  await shot(page, 'queue');
  await h.client.request('POST', `/v1/jobs/${stuck.id}/cancel`);

  // Usage: the jobs just run (every tenant's: an admin's view), in the chart and its table.
  const usagePage = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  usagePage.on('pageerror', (e) => consoleErrors.push(e.message));
  await signedIn(usagePage, adminViewer);
  const { jobs } = await h.client.request<{ jobs: { state: string }[] }>('GET', '/v1/jobs?limit=1000');
  const finished = jobs.filter((j) => ['succeeded', 'failed', 'cancelled', 'timed_out', 'lost'].includes(j.state)).length;
  await usagePage.getByRole('link', { name: 'Usage' }).click();
  await usagePage.locator(`[data-usage-total="${finished}"]`).waitFor();
  assert.ok(finished >= 3, `${finished} finished jobs`);
  assert.equal(await usagePage.locator('.chart canvas').count(), 1, 'the chart is drawn');
  await usagePage.getByRole('table', { name: /Totals by repository/ }).getByText('acme/app').waitFor();
  const download = usagePage.waitForEvent('download');
  await usagePage.getByRole('button', { name: 'Export CSV' }).click();
  const csvPath = join(OUT, 'usage.csv');
  await (await download).saveAs(csvPath);
  await shot(usagePage, 'usage');
  await usagePage.close();
  // The refused sign-in's 401 is the one failed request the browser reports.
  assert.deepEqual(
    consoleErrors.filter((e) => !/status of 401/.test(e)),
    [],
  );
  await page.close();
});

test('on a phone: no sideways scrolling, the nav and tables fit', { skip }, async () => {
  const ctx = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2 });
  const page = await ctx.newPage();
  await signedIn(page, viewer);
  for (const name of ['Fleet', 'Queue', 'Jobs', 'Usage']) {
    await page.getByRole('link', { name }).click();
    await page.getByRole('heading', { name, level: 2 }).waitFor();
    await page.locator('main [aria-busy="false"]').first().waitFor();
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 0, `${name} scrolls sideways by ${overflow}px on a phone`);
    await shot(page, `phone-${name.toLowerCase()}`);
  }
  await ctx.close();
});

test('fleet: the image versions a host keeps warm, built after its first job, shown per host; the next job starts warm', { skip }, async () => {
  // host-1 was drained above: this host takes the jobs. Its driver keeps (simulated) snapshots, so its
  // agent's planner builds one for the image and shape its first job used and reports it.
  const data = makeTestDataDir();
  const { secret } = await h.client.request<{ secret: string }>('POST', '/v1/tokens', { name: 'warm agent', role: 'agent' });
  const agent = makeAgent({ servers: [h.url], token: secret, name: 'warm-host', dataDir: data.dir, driver: makeMemoryDriver({ snapshots: { buildMs: 50 } }), images: makeMemoryImageResolver(), logger: quietLogger(), minBackoffMs: 50, maxBackoffMs: 500 });
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  try {
    const c = agent.connected(60_000);
    await agent.start();
    await c;
    type JobOut = { state: string; vmStart?: string | null };
    const job = async (): Promise<JobOut> => {
      const { id } = await h.client.request<{ id: number }>('POST', '/v1/jobs', { command: ['true'] });
      let j: JobOut = { state: 'queued' };
      await until(`job ${id} done`, async () => (j = await h.client.request<JobOut>('GET', `/v1/jobs/${id}`)).state === 'succeeded', 60_000);
      return j;
    };
    assert.equal((await job()).vmStart, 'cold');
    type Snap = { image: string; digest?: string; state: string };
    let snaps: Snap[] = [];
    await until('the warm host to report a ready snapshot', async () => {
      const { hosts } = await h.client.request<{ hosts: { name: string; snapshots?: Snap[] | null }[] }>('GET', '/v1/hosts');
      snaps = hosts.find((x) => x.name === 'warm-host')?.snapshots ?? [];
      return snaps.some((x) => x.state === 'ready');
    }, 60_000);
    const ready = snaps.find((x) => x.state === 'ready')!;
    // The memory driver's images are named memory:<name> where a real host's are sha256 digests.
    assert.deepEqual([ready.image, ready.digest], ['default', 'memory:default']);
    assert.equal((await job()).vmStart, 'warm', 'the next job of that image and shape is restored');

    await signedIn(page, viewer);
    await page.getByRole('link', { name: 'Fleet' }).click();
    const cell = page.locator('[data-host-images="warm-host"]');
    await cell.getByText('ready').waitFor();
    assert.match(await cell.innerText(), new RegExp(ready.digest!.slice(0, 19)));
    assert.equal(await page.locator('[data-host-images="host-1"]').count(), 0, 'a host without snapshots shows none');
    // The images it holds (the memory driver holds each image a job named), beside the warm ones.
    const { hosts } = await h.client.request<{ hosts: { name: string; images?: { profile: string; digest: string }[] | null }[] }>('GET', '/v1/hosts');
    assert.deepEqual(hosts.find((x) => x.name === 'warm-host')?.images?.map((m) => [m.profile, m.digest]), [['default', 'memory:default']]);
    await page.locator('[data-host-held="warm-host"]').getByText('default memory:default').waitFor();
    await shot(page, 'fleet-warm-images');
  } finally {
    await page.close();
    await agent.stop();
    data.cleanup();
  }
});

test('fleet: a large fleet draws its first 200 rows, hosts that need a look first; "Show all" draws the rest', { skip }, async () => {
  // 230 more hosts that joined and left (offline): with the ones above, more than FLEET_ROWS_SHOWN.
  const cap = (i: number) => ({ name: `bulk-${String(i).padStart(3, '0')}`, arch: 'amd64' as const, cpus: 4, memoryBytes: 8 * 1024 ** 3, diskBytes: 50 * 1024 ** 3, accel: 'kvm' as const, labels: [], driver: 'memory', agentVersion: 't' });
  for (let i = 0; i < 230; i++) {
    const host = await connectHost(h.store.db, cap(i), 'bulk-server');
    await disconnectHost(h.store.db, host.id, 'bulk-server');
  }
  // And one online host (whatever the tests above left online or not), named to sort among the first.
  await connectHost(h.store.db, { ...cap(0), name: 'aaa-online' }, 'bulk-server');
  const { hosts } = await h.client.request<{ hosts: { name: string; state: string }[] }>('GET', '/v1/hosts');
  assert.ok(hosts.length > FLEET_ROWS_SHOWN);
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  try {
    await signedIn(page, viewer);
    await page.getByRole('link', { name: 'Fleet' }).click();
    const more = page.locator('[data-fleet-more]');
    await more.waitFor();
    assert.equal(await page.locator('[data-host]').count(), FLEET_ROWS_SHOWN);
    assert.equal(await more.getAttribute('data-fleet-more'), String(hosts.length - FLEET_ROWS_SHOWN));
    // Every host drawn is one that needs a look (all these are offline): an online host waits for "Show all".
    const online = hosts.filter((x) => x.state === 'online').map((x) => x.name);
    assert.ok(online.length > 0);
    for (const name of online) assert.equal(await page.locator(`[data-host="${name}"]`).count(), 0, `${name} (online) is not among the first rows`);
    await page.getByRole('button', { name: `Show all ${hosts.length} hosts` }).click();
    await page.locator(`[data-host="${online[0]}"]`).waitFor();
    assert.equal(await page.locator('[data-host]').count(), hosts.length);
    assert.equal(await more.count(), 0);
  } finally {
    await page.close();
  }
});

/** Jobs too big for any host wait queued: enough of them that the list has more than JOBS_SHOWN. Then the jobs page, open. */
async function jobsPageOverfull(): Promise<{ made: number[]; page: Page }> {
  const made: number[] = [];
  for (let i = 0; i < JOBS_SHOWN + 5; i++) made.push((await h.client.request<{ id: number }>('POST', '/v1/jobs', { command: ['true'], cpus: 64 })).id);
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  await signedIn(page, viewer);
  await page.getByRole('link', { name: 'Jobs' }).click();
  await page.locator('[data-jobs-more]').waitFor();
  return { made, page };
}

test('jobs: the list draws the newest 100 at first (it is asked for again as jobs change); "Show up to 500" draws more', { skip }, async () => {
  const { made, page } = await jobsPageOverfull();
  try {
    const more = page.locator('[data-jobs-more]');
    assert.equal(await page.locator('[data-job-state]').count(), JOBS_SHOWN);
    // Newest first: the last one submitted is drawn, the first of these is not (yet).
    assert.equal(await page.locator(`[data-job-state="${made.at(-1)}"]`).count(), 1);
    assert.equal(await page.locator(`[data-job-state="${made[0]}"]`).count(), 0);
    await page.getByRole('button', { name: `Show up to ${JOBS_MAX}` }).click();
    await page.locator(`[data-job-state="${made[0]}"]`).waitFor();
    assert.ok((await page.locator('[data-job-state]').count()) > JOBS_SHOWN);
    assert.equal(await more.count(), 0);
  } finally {
    await page.close();
    for (const id of made) await h.client.request('POST', `/v1/jobs/${id}/cancel`);
  }
});

test('jobs: an older list that answers after a newer one is not drawn; a shown job that ends gets its exit code, no reload', { skip }, async () => {
  const { made, page } = await jobsPageOverfull();
  try {
    await page.evaluate(() => ((window as unknown as { __noReload: boolean }).__noReload = true));
    // The next list of the newest 100 is held until the test lets it go.
    let held!: () => void;
    const release = new Promise<void>((r) => (held = r));
    let sawHeld!: () => void;
    const heldSeen = new Promise<void>((r) => (sawHeld = r));
    await page.route(/\/v1\/jobs\?limit=100(&|$)/, async (route) => {
      sawHeld();
      await release;
      await route.continue();
    });
    // host-1 takes the gated job below (the first test drained it).
    await h.client.request('POST', '/v1/hosts/host-1/uncordon');
    // A new job the page can show makes it ask for the list again (limit 100): held.
    const ends = await h.client.request<{ id: number }>('POST', '/v1/jobs', { labels: ['kiln-2cpu-4gb'], command: ['sh', '-c', 'gate seven; exit 7'] });
    await heldSeen;
    // Meanwhile the viewer asks for up to 500: drawn first.
    await page.getByRole('button', { name: `Show up to ${JOBS_MAX}` }).click();
    await page.locator(`[data-job-state="${made[0]}"]`).waitFor();
    const drawn = await page.locator('[data-job-state]').count();
    assert.ok(drawn > JOBS_SHOWN, `${drawn} rows`);
    // The held answer (100 rows) arrives last, and changes nothing: the page counts it as stale and draws nothing.
    held();
    await page.locator('[data-jobs-stale]').waitFor({ state: 'attached' });
    assert.equal(await page.locator('[data-job-state]').count(), drawn, 'the older, shorter list was drawn over the newer one');
    await page.unroute(/\/v1\/jobs\?limit=100(&|$)/);
    // The queued big jobs go (they stand before the gated one in its tenant's queue).
    for (const id of made.splice(0)) await h.client.request('POST', `/v1/jobs/${id}/cancel`);

    // The gated job ends with 7: its row shows the exit code from the feed's news, without a reload.
    await page
      .locator(`[data-job-state="${ends.id}"] .badge`, { hasText: 'running' })
      .waitFor()
      .catch(async (e: unknown) => {
        const j = await h.client.request<{ state: string; hostId: number | null }>('GET', `/v1/jobs/${ends.id}`);
        throw new Error(`job ${ends.id} is ${j.state} on host ${j.hostId}; its row: ${await page.locator(`[data-job-state="${ends.id}"]`).first().innerHTML().catch(() => 'none')}`, { cause: e });
      });
    assert.equal(await page.locator(`[data-job-exit="${ends.id}"]`).innerText(), '');
    gates.get('seven')!();
    await page.locator(`[data-job-exit="${ends.id}"]`, { hasText: '7' }).waitFor();
    await page.locator(`[data-job-state="${ends.id}"] .badge`, { hasText: 'failed' }).waitFor();
    assert.equal(await page.evaluate(() => (window as unknown as { __noReload?: boolean }).__noReload), true, 'the page was not reloaded');
  } finally {
    await page.close();
    for (const id of made) await h.client.request('POST', `/v1/jobs/${id}/cancel`);
  }
});
