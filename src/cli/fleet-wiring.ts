/** Wiring shared by `kiln server`, `kiln agent` and `kiln up`: loggers, drivers, image resolvers. */
import { pino, type Logger } from 'pino';
import type { Arch } from '../core/arch.ts';
import { KilnError } from '../core/errors.ts';
import { imageBuildHint, makeImageStore } from '../image/store.ts';
import type { ImageResolver } from '../agent/images.ts';
import { memoryImageResolver } from '../agent/images.ts';
import { makeMemoryDriver } from '../vm/memory-driver.ts';
import { makeQemuDriver } from '../vm/qemu-driver.ts';
import type { VmDriver } from '../vm/driver.ts';
import { loadVmConfig, memoryDriverTestAppendDir } from './config.ts';
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
): { driver: VmDriver; images: ImageResolver } {
  if (kind === 'memory') {
    const appendDir = memoryDriverTestAppendDir();
    return { driver: makeMemoryDriver({ ...(sim.bootMs !== undefined ? { bootMs: sim.bootMs } : {}), ...(appendDir ? { appendDir } : {}) }), images: memoryImageResolver };
  }
  const vm = loadVmConfig();
  return {
    driver: makeQemuDriver({ dataDir, accel: vm.accel, ...(vm.bootTimeoutMs !== undefined ? { bootTimeoutMs: vm.bootTimeoutMs } : {}), egress: vm.egress, logger }),
    images: makeStoreImageResolver(dataDir),
  };
}
