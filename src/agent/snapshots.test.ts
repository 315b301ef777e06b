import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { memoryImageResolver } from './images.ts';
import { makeSnapshotPlanner } from './snapshots.ts';
import type { SnapshotPort, VmSpec } from '../vm/driver.ts';

const GiB = 1024 ** 3;
const MiB = 1024 ** 2;

/** A store of snapshots by image and shape, as a driver's port sees it; builds take `buildMs` and may fail. */
function portWith(budgetBytes: number, o: { fail?: (s: VmSpec) => string | undefined } = {}) {
  const have = new Map<string, number>();
  const built: string[] = [];
  const drops: (() => void)[] = [];
  let release: (() => void) | undefined;
  const key = (s: VmSpec) => `${s.image.digest}/${s.cpus}/${s.memoryBytes}${s.cacheBytes !== undefined ? `/cache=${s.cacheBytes}` : ''}`;
  const port: SnapshotPort = {
    budgetBytes,
    usedBytes: () => [...have.values()].reduce((a, b) => a + b, 0),
    find: (s) => (have.has(key(s)) ? { bytes: have.get(key(s))! } : undefined),
    async build(s, signal) {
      await new Promise<void>((r) => {
        release = r;
        signal?.addEventListener('abort', () => r(), { once: true });
        setTimeout(r, 5);
      });
      signal?.throwIfAborted();
      const why = o.fail?.(s);
      if (why) throw new Error(why);
      built.push(key(s));
      have.set(key(s), s.memoryBytes / 4);
      return { bytes: s.memoryBytes / 4 };
    },
    onDrop: (cb) => void drops.push(cb),
  };
  /** The driver dropped a snapshot after a failed restore. */
  const drop = (s: VmSpec) => {
    have.delete(key(s));
    for (const cb of drops) cb();
  };
  return { port, have, built, drop, release: () => release?.() };
}

const shape = (image: string, cpus = 1, memoryBytes = 512 * MiB) => ({ image, arch: 'amd64' as const, cpus, memoryBytes, diskBytes: 256 * MiB });

void test('the planner builds the most used shapes first, reports each state, and remembers uses across restarts', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'kiln-planner-'));
  try {
    const p = portWith(4 * GiB);
    let changes = 0;
    const planner = makeSnapshotPlanner({ port: p.port, images: memoryImageResolver, dataDir: dir, log: pino({ level: 'silent' }), changed: () => changes++ });
    planner.noteUse(shape('rare'));
    planner.noteUse(shape('ci', 2, GiB));
    planner.noteUse(shape('ci', 2, GiB));
    await planner.idle();
    assert.deepEqual(p.built.sort(), ['memory:ci/2/1073741824', 'memory:rare/1/536870912']);
    const states = planner.states();
    assert.deepEqual(states.map((s) => [s.image, s.uses, s.state]), [['ci', 2, 'ready'], ['rare', 1, 'ready']]);
    assert.equal(states[0]!.bytes, GiB / 4);
    assert.ok(changes >= 2);
    // The driver drops a snapshot whose restore failed: the planner notices and builds it again.
    p.drop({ id: 'x', arch: 'amd64', cpus: 2, memoryBytes: GiB, diskBytes: 256 * MiB, image: await memoryImageResolver('ci', 'amd64'), job: { command: ['true'], env: {} }, timeoutMs: 1 });
    await new Promise((r) => setImmediate(r));
    await planner.idle();
    assert.equal(p.built.filter((b) => b === 'memory:ci/2/1073741824').length, 2);
    assert.equal(planner.states()[0]?.state, 'ready');
    await planner.stop();
    const saved = JSON.parse(readFileSync(join(dir, 'snapshots', 'usage.json'), 'utf8')) as { image: string; uses: number }[];
    assert.deepEqual(saved.map((u) => [u.image, u.uses]).sort(), [['ci', 2], ['rare', 1]]);

    // A new agent on the same data directory: the shapes it ran before are checked (and built) at start.
    const again = portWith(4 * GiB);
    const next = makeSnapshotPlanner({ port: again.port, images: memoryImageResolver, dataDir: dir, log: pino({ level: 'silent' }), changed: () => undefined });
    await new Promise((r) => setImmediate(r));
    await next.idle();
    assert.deepEqual(again.built[0], 'memory:ci/2/1073741824', 'most used first');
    assert.equal(again.built.length, 2);
    await next.stop();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

void test('a shape that does not fit in the budget is not built and says why; a failed build says why and is retried after the next use', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'kiln-planner-'));
  try {
    let failing = true;
    const p = portWith(300 * MiB, { fail: (s) => (failing && s.image.digest === 'memory:flaky' ? 'the template VM exited' : undefined) });
    const planner = makeSnapshotPlanner({ port: p.port, images: memoryImageResolver, dataDir: dir, log: pino({ level: 'silent' }), changed: () => undefined });
    planner.noteUse(shape('big', 1, 4 * GiB));
    planner.noteUse(shape('flaky'));
    await planner.idle();
    const byImage = Object.fromEntries(planner.states().map((s) => [s.image, s]));
    assert.equal(byImage.big?.state, 'failed');
    assert.match(byImage.big?.error ?? '', /would not fit in the snapshot disk budget/);
    assert.equal(byImage.flaky?.state, 'failed');
    assert.match(byImage.flaky?.error ?? '', /template VM exited/);
    assert.deepEqual(p.built, []);
    failing = false;
    planner.noteUse(shape('flaky'));
    await planner.idle();
    assert.equal(planner.states().find((s) => s.image === 'flaky')?.state, 'ready');
    await planner.stop();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

void test('stopping the planner cuts a build in flight short', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'kiln-planner-'));
  try {
    const p = portWith(4 * GiB);
    p.port.build = (_s, signal) => new Promise((_r, reject) => signal?.addEventListener('abort', () => reject(new Error('aborted')), { once: true }));
    const planner = makeSnapshotPlanner({ port: p.port, images: memoryImageResolver, dataDir: dir, log: pino({ level: 'silent' }), changed: () => undefined });
    planner.noteUse(shape('slow'));
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(planner.states()[0]?.state, 'building');
    await planner.stop();
    assert.equal(planner.states()[0]?.state, 'failed');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

void test('jobs with a cache are a shape of their own per cache size: its snapshot is built with a cache slot of that size', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'kiln-planner-'));
  try {
    const p = portWith(4 * GiB);
    const planner = makeSnapshotPlanner({ port: p.port, images: memoryImageResolver, dataDir: dir, log: pino({ level: 'silent' }), changed: () => undefined });
    planner.noteUse(shape('default'));
    planner.noteUse({ ...shape('default'), cacheBytes: 4 * GiB });
    planner.noteUse({ ...shape('default'), cacheBytes: 4 * GiB });
    planner.noteUse({ ...shape('default'), cacheBytes: 64 * MiB });
    await planner.idle();
    assert.deepEqual(p.built.sort(), ['memory:default/1/536870912', 'memory:default/1/536870912/cache=4294967296', 'memory:default/1/536870912/cache=67108864']);
    const states = planner.states();
    assert.deepEqual(states[0] && [states[0].cacheBytes, states[0].uses, states[0].state], [4 * GiB, 2, 'ready'], 'most used first');
    const bySize = (list: { cacheBytes?: number }[]) => list.map((s) => s.cacheBytes ?? 0).sort((a, b) => a - b);
    assert.deepEqual(bySize(states), [0, 64 * MiB, 4 * GiB]);
    assert.ok(states.every((s) => s.state === 'ready'));
    await planner.stop();
    // Remembered across a restart with their cache sizes.
    const again = makeSnapshotPlanner({ port: portWith(4 * GiB).port, images: memoryImageResolver, dataDir: dir, log: pino({ level: 'silent' }), changed: () => undefined });
    await new Promise((r) => setImmediate(r));
    await again.idle();
    assert.deepEqual(bySize(again.states()), [0, 64 * MiB, 4 * GiB]);
    await again.stop();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
