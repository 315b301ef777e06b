/** Wiring shared by `kiln server`, `kiln agent` and `kiln up`: loggers, drivers with their image resolvers (src/agent/images.ts), mirrors. */
import { pino, type Logger } from 'pino';
import { makeStoreImageResolver, makeMemoryImageResolver, type ImageResolver } from '../agent/images.ts';
import { makeMemoryDriver } from '../vm/memory-driver.ts';
import { makeQemuDriver } from '../vm/qemu-driver.ts';
import { makeCacheStore, type CacheStore } from '../vm/cache-store.ts';
import type { VmDriver } from '../vm/driver.ts';
import { loadVmConfig, memoryDriverTestAppendDir, memoryDriverTestCaches } from './config.ts';
import { RegistryMirror } from '../agent/mirror.ts';
import { MIRROR_GUEST_ADDRESS } from '../agent/agent.ts';
import { mirrorVmSettings } from '../vm/forwards.ts';
import type { MirrorConfig } from './fleet-config.ts';

/**
 * The host's registry mirrors from its config, one per registry, Docker Hub's first (empty: none configured);
 * the agent supervises them and gives every VM their forwards and addresses.
 */
export function makeMirrorsFor(cfg: MirrorConfig | undefined, dataDir: string, logger: Logger): RegistryMirror[] {
  if (!cfg) return [];
  const settings = mirrorVmSettings([cfg, ...cfg.others].map((m, i) => ({ registry: m.registry, hostPort: i })));
  const make = (m: { registry: string; upstream: string; listen: string }, upstream: { url: string; username?: string | undefined; password?: string | undefined }) => {
    const guestAddress = m.registry === 'docker.io' ? MIRROR_GUEST_ADDRESS : settings.registryMirrors?.find((x) => x.registry === m.registry)?.address;
    return new RegistryMirror({
      dataDir,
      registry: m.registry,
      listen: m.listen,
      ...(guestAddress ? { guestAddress } : {}),
      upstream,
      // Measure the cache at most as often as it is reported.
      cacheSizeMaxAgeMs: Math.min(cfg.statusIntervalMs, 15_000),
      logger: logger.child({ part: 'mirror', registry: m.registry }),
    });
  };
  return [make(cfg, { url: cfg.upstream, username: cfg.username, password: cfg.password }), ...cfg.others.map((m) => make(m, { url: m.upstream }))];
}

/** Structured logs to stderr (JSON lines), so stdout stays for results. */
export function makeLogger(level: string, name = 'kiln'): Logger {
  return pino({ name, level, base: { pid: process.pid } }, pino.destination({ fd: 2, sync: false }));
}

export function makeDriverFor(
  kind: 'qemu' | 'memory',
  dataDir: string,
  logger: Logger,
  sim: { bootMs?: number } = {},
): { driver: VmDriver; images: ImageResolver; caches?: CacheStore } {
  if (kind === 'memory') {
    const appendDir = memoryDriverTestAppendDir();
    const caches = memoryDriverTestCaches();
    return {
      driver: makeMemoryDriver({ ...(sim.bootMs !== undefined ? { bootMs: sim.bootMs } : {}), ...(appendDir ? { appendDir } : {}), ...(caches ? { cacheWrites: true } : {}) }),
      images: makeMemoryImageResolver(),
      ...(caches ? { caches: makeCacheStore(dataDir, { logger }) } : {}),
    };
  }
  const vm = loadVmConfig();
  return {
    driver: makeQemuDriver({
      dataDir,
      accel: vm.accel,
      ...(vm.bootTimeoutMs !== undefined ? { bootTimeoutMs: vm.bootTimeoutMs } : {}),
      egress: vm.egress,
      logger,
      // The agent builds snapshots ahead of need (src/agent/snapshots.ts): a job never waits for one.
      ...(vm.warmStarts ? { snapshots: { buildOnMiss: false, ...(vm.snapshotBudgetBytes !== undefined ? { budgetBytes: vm.snapshotBudgetBytes } : {}) } } : {}),
    }),
    images: makeStoreImageResolver(dataDir),
    caches: makeCacheStore(dataDir, {
      logger,
      ...(vm.cacheBudgetBytes !== undefined ? { budgetBytes: vm.cacheBudgetBytes } : {}),
      ...(vm.cacheMaxIdleMs !== undefined ? { maxIdleMs: vm.cacheMaxIdleMs } : {}),
      ...(vm.holdCacheCommits
        ? {
            beforePointer: (key: string, v: string) => {
              logger.warn({ cache: key, version: v }, `holding the commit of cache ${key} version ${v} (KILN_TEST_HOLD_CACHE_COMMIT)`);
              return new Promise<void>(() => undefined);
            },
          }
        : {}),
    }),
  };
}
