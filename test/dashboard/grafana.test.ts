/**
 * docs/grafana-dashboard.json and docs/prometheus-alerts.yml name only metrics a kiln server (with GitHub
 * configured) exports, with label names those metrics have; the dashboard is well-formed for import.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse } from 'yaml';
import { REPO } from '../support/kiln.ts';
import { startGitHubHarness, type GitHubHarness } from '../github/support/harness.ts';

let h: GitHubHarness | undefined;
after(() => h?.close());

/** Metric families the server registers: name → kind and label names (from the registry itself). */
async function exported(): Promise<Map<string, { type: string; labels: Set<string> }>> {
  h ??= await startGitHubHarness({ agent: false });
  const out = new Map<string, { type: string; labels: Set<string> }>();
  for (const m of await h.server.ctx.metrics.registry.getMetricsAsJSON()) {
    const labels = new Set<string>(['le', 'quantile']);
    for (const v of m.values) for (const k of Object.keys(v.labels)) labels.add(k);
    const declared = (h.server.ctx.metrics.registry.getSingleMetric(m.name) as unknown as { labelNames?: string[] } | undefined)?.labelNames ?? [];
    for (const k of declared) labels.add(k);
    out.set(m.name, { type: String(m.type), labels });
  }
  return out;
}

/** Every kiln metric a PromQL expression names, with the series suffix a histogram adds. */
function metricsIn(expr: string): { name: string; family: string }[] {
  return [...expr.matchAll(/\bkiln_[a-z0-9_]+/g)].map((m) => ({ name: m[0], family: m[0].replace(/_(bucket|sum|count)$/, '') }));
}

function check(where: string, expr: string, metrics: Map<string, { type: string; labels: Set<string> }>): void {
  const names = metricsIn(expr);
  assert.ok(names.length > 0, `${where}: no kiln metric in ${expr}`);
  for (const n of names) {
    const m = metrics.get(n.name) ?? metrics.get(n.family);
    assert.ok(m, `${where}: ${n.name} is not a metric kiln exports (${expr})`);
    if (n.name !== n.family) assert.equal(m.type, 'histogram', `${where}: ${n.name} is a histogram series but ${n.family} is a ${m.type}`);
    if (m.type === 'histogram' && n.name === n.family) assert.fail(`${where}: use ${n.name}_bucket/_sum/_count, not the bare histogram name`);
    // label matchers and by (...) clauses name only labels the metric has
    for (const lm of expr.matchAll(new RegExp(`${n.name}\\{([^}]*)\\}`, 'g'))) {
      for (const l of lm[1]!.matchAll(/(\w+)\s*[=!~]/g)) assert.ok(m.labels.has(l[1]!), `${where}: ${n.family} has no label ${l[1]}`);
    }
  }
  for (const by of expr.matchAll(/by \(([^)]*)\)/g)) {
    const labels = by[1]!.split(',').map((s) => s.trim());
    for (const l of labels) assert.ok(names.some((n) => (metrics.get(n.name) ?? metrics.get(n.family))!.labels.has(l)), `${where}: no metric of ${expr} has label ${l}`);
  }
}

test('the Grafana dashboard names only exported metrics and labels, and imports cleanly', async () => {
  const metrics = await exported();
  for (const name of ['kiln_job_wait_seconds', 'kiln_job_boot_seconds', 'kiln_github_pickup_seconds']) {
    assert.equal(metrics.get(name)?.type, 'histogram', name);
    assert.ok(metrics.get(name)!.labels.has('arch') && metrics.get(name)!.labels.has('labels'), `${name} is by arch and label set`);
  }
  const dash = JSON.parse(readFileSync(join(REPO, 'docs/grafana-dashboard.json'), 'utf8')) as {
    uid: string;
    __inputs: { name: string }[];
    panels: { id: number; title: string; gridPos: { x: number; y: number; w: number; h: number }; datasource: { uid: string }; targets: { expr: string; refId: string }[] }[];
  };
  assert.ok(dash.uid && dash.__inputs.some((i) => i.name === 'DS_PROMETHEUS'));
  const ids = new Set<number>();
  for (const p of dash.panels) {
    assert.ok(!ids.has(p.id), `panel id ${p.id} is repeated`);
    ids.add(p.id);
    assert.equal(p.datasource.uid, '${DS_PROMETHEUS}', p.title);
    assert.ok(p.gridPos.x + p.gridPos.w <= 24, `${p.title} is wider than the grid`);
    assert.ok(p.targets.length > 0, `${p.title} has no query`);
    for (const t of p.targets) check(`panel "${p.title}"`, t.expr, metrics);
  }
  const used = new Set(dash.panels.flatMap((p) => p.targets.flatMap((t) => metricsIn(t.expr).map((n) => n.family))));
  for (const name of ['kiln_job_wait_seconds', 'kiln_job_boot_seconds', 'kiln_github_pickup_seconds', 'kiln_hosts', 'kiln_host_mirror_healthy', 'kiln_job_boot_failures_total']) {
    assert.ok(used.has(name), `the dashboard shows ${name}`);
  }
});

test('the example alert rules name only exported metrics and cover queue time, hosts offline, mirror down, boot failures', async () => {
  const metrics = await exported();
  const doc = parse(readFileSync(join(REPO, 'docs/prometheus-alerts.yml'), 'utf8')) as { groups: { name: string; rules: { alert: string; expr: string; for?: string; labels: { severity: string }; annotations: { summary: string } }[] }[] };
  const rules = doc.groups.flatMap((g) => g.rules);
  for (const r of rules) {
    assert.match(r.alert, /^Kiln[A-Za-z]+$/);
    assert.ok(['warning', 'critical'].includes(r.labels.severity), `${r.alert} severity`);
    assert.ok(r.annotations.summary, `${r.alert} has a summary`);
    if (r.for !== undefined) assert.match(r.for, /^\d+[smh]$/);
    check(`alert ${r.alert}`, r.expr, metrics);
  }
  const families = new Set(rules.flatMap((r) => metricsIn(r.expr).map((n) => n.family)));
  for (const name of ['kiln_job_wait_seconds', 'kiln_hosts', 'kiln_host_mirror_healthy', 'kiln_job_boot_failures_total']) assert.ok(families.has(name), `an alert watches ${name}`);
});
