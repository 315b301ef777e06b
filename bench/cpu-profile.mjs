// Summarises a V8 CPU profile (node --cpu-prof) over a time window: self and total time per function.
//   node bench/cpu-profile.mjs FILE.cpuprofile [FROM_US TO_US] [TOP] [FILTER]
// FILTER: a regular expression on 'name file:line' for the inclusive listing (e.g. 'chunks/' for kiln's own code).
// FROM/TO are CLOCK_MONOTONIC microseconds (bench:scheduler prints its phases' with BENCH_DEBUG=1).
import { readFileSync } from 'node:fs';

const [file, from, to, top, filter] = process.argv.slice(2);
if (!file) {
  console.error('usage: node bench/cpu-profile.mjs FILE.cpuprofile [FROM_US TO_US] [TOP]');
  process.exit(2);
}
const prof = JSON.parse(readFileSync(file, 'utf8'));
const lo = from ? Number(from) : -Infinity;
const hi = to ? Number(to) : Infinity;
const n = Number(top ?? 40);

const byId = new Map(prof.nodes.map((x) => [x.id, x]));
const parent = new Map();
for (const x of prof.nodes) for (const c of x.children ?? []) parent.set(c, x.id);
const key = (x) => {
  const f = x.callFrame;
  const url = f.url.replace(/^file:\/\//, '').replace(/.*\/(src|node_modules|dist)\//, '$1/');
  return `${f.functionName || '(anonymous)'} ${url}:${f.lineNumber + 1}`;
};

const self = new Map();
const total = new Map();
let t = prof.startTime;
let sum = 0;
for (let i = 0; i < prof.samples.length; i++) {
  t += prof.timeDeltas[i];
  if (t < lo || t > hi) continue;
  const dt = prof.timeDeltas[i + 1] ?? 0;
  sum += dt;
  let id = prof.samples[i];
  const leaf = byId.get(id);
  self.set(key(leaf), (self.get(key(leaf)) ?? 0) + dt);
  const seen = new Set();
  while (id !== undefined) {
    const k = key(byId.get(id));
    if (!seen.has(k)) {
      seen.add(k);
      total.set(k, (total.get(k) ?? 0) + dt);
    }
    id = parent.get(id);
  }
}
const show = (title, m, re) => {
  console.log(`\n${title}`);
  for (const [k, v] of [...m].filter(([k]) => !re || re.test(k)).sort((a, b) => b[1] - a[1]).slice(0, n)) console.log(`${(v / 1000).toFixed(0).padStart(8)} ms ${((100 * v) / sum).toFixed(1).padStart(5)}%  ${k}`);
};
console.log(`window: ${(sum / 1000).toFixed(0)} ms of samples`);
show('self time', self);
show('total time (inclusive)', total, filter ? new RegExp(filter) : undefined);
