/** Wiring shared by `kiln server`, `kiln agent` and `kiln up`: loggers, drivers, image resolvers. */
import { pino, type Logger } from 'pino';
import type { Arch } from '../core/arch.ts';
import { KilnError } from '../core/errors.ts';
import { makeImageStore } from '../image/store.ts';
import type { ImageResolver } from '../agent/images.ts';
import { memoryImageResolver } from '../agent/images.ts';
import { makeMemoryDriver } from '../vm/memory-driver.ts';
import { makeQemuDriver } from '../vm/qemu-driver.ts';
import type { VmDriver } from '../vm/driver.ts';
import { loadVmConfig } from './config.ts';

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
      throw new KilnError('image.not_found', `no ${arch} image "${image}" on this host`, { hint: `build it on the host: kiln image build --arch ${arch}` });
    }
    await store.verify(m);
    return store.toRef(m);
  };
}

export function makeDriverFor(
  kind: 'qemu' | 'memory',
  dataDir: string,
  logger: Logger,
  sim: { bootMs?: number } = {},
): { driver: VmDriver; images: ImageResolver } {
  if (kind === 'memory') return { driver: makeMemoryDriver({ ...(sim.bootMs !== undefined ? { bootMs: sim.bootMs } : {}) }), images: memoryImageResolver };
  const vm = loadVmConfig();
  return {
    driver: makeQemuDriver({ dataDir, accel: vm.accel, ...(vm.bootTimeoutMs !== undefined ? { bootTimeoutMs: vm.bootTimeoutMs } : {}), logger }),
    images: makeStoreImageResolver(dataDir),
  };
}
