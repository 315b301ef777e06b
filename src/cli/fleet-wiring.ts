/** Wiring shared by `kiln server`, `kiln agent` and `kiln up`: loggers, drivers, image resolvers. */
import { pino, type Logger } from 'pino';
import type { Arch } from '../core/arch.ts';
import { KilnError } from '../core/errors.ts';
import { imageBuildHint, makeImageStore } from '../image/store.ts';
import type { ImageResolver } from '../agent/images.ts';
import { memoryImageResolver } from '../agent/images.ts';
import { makeMemoryDriver } from '../vm/memory-driver.ts';
import { makeQemuDriver } from '../vm/qemu-driver.ts';
import { makeCacheStore, type CacheStore } from '../vm/cache-store.ts';
import type { VmDriver } from '../vm/driver.ts';
import { loadVmConfig, memoryDriverTestAppendDir } from './config.ts';
import { RegistryMirror } from '../agent/mirror.ts';
import { MIRROR_GUEST_ADDRESS } from '../agent/agent.ts';
import type { MirrorConfig } from './fleet-config.ts';

/** The host's registry mirror from its config (undefined: none configured); the agent supervises it. */
export function makeMirrorFor(cfg: MirrorConfig | undefined, dataDir: string, logger: Logger): RegistryMirror | undefined {
  if (!cfg) return undefined;
  return new RegistryMirror({
    dataDir,
    listen: cfg.listen,
    guestAddress: MIRROR_GUEST_ADDRESS,
    upstream: { url: cfg.upstream, username: cfg.username, password: cfg.password },
    // Measure the cache at most as often as it is reported.
    cacheSizeMaxAgeMs: Math.min(cfg.statusIntervalMs, 15_000),
    logger: logger.child({ part: 'mirror' }),
  });
}

/** Structured logs to stderr (JSON lines), so stdout stays for results. */
export function makeLogger(level: string, name = 'kiln'): Logger {
  return pino({ name, level, base: { pid: process.pid } }, pino.destination({ fd: 2, sync: false }));
}

/** Guest images from kiln's image store: `default` is the newest minimal image for the arch. */
export function makeStoreImageResolver(dataDir: string): ImageResolver {
  const store = makeImageStore(dataDir);
  return async (image: string, arch: Arch) => {
    const m = store.resolve(image === 'default' ? 'minimal' : image, arch);
    if (!m) {
      throw new KilnError('image.not_found', `no ${arch} image "${image}" on this host`, { hint: `on that host, ${imageBuildHint(image === 'default' ? 'minimal' : image, arch)}` });
    }
    await store.check(m);
    return store.toRef(m);
  };
}

export function makeDriverFor(
  kind: 'qemu' | 'memory',
  dataDir: string,
  logger: Logger,
  sim: { bootMs?: number } = {},
): { driver: VmDriver; images: ImageResolver; caches?: CacheStore } {
  if (kind === 'memory') {
    const appendDir = memoryDriverTestAppendDir();
    return { driver: makeMemoryDriver({ ...(sim.bootMs !== undefined ? { bootMs: sim.bootMs } : {}), ...(appendDir ? { appendDir } : {}) }), images: memoryImageResolver };
  }
  const vm = loadVmConfig();
  return {
    driver: makeQemuDriver({ dataDir, accel: vm.accel, ...(vm.bootTimeoutMs !== undefined ? { bootTimeoutMs: vm.bootTimeoutMs } : {}), egress: vm.egress, logger }),
    images: makeStoreImageResolver(dataDir),
    caches: makeCacheStore(dataDir, {
      logger,
      ...(vm.cacheBudgetBytes !== undefined ? { budgetBytes: vm.cacheBudgetBytes } : {}),
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
