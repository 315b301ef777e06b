/**
 * The agent's port to guest images: a job names an image, the driver needs files and digests. Two
 * resolvers: kiln's image store on this host (the QEMU driver) and the in-memory driver's names.
 */
import type { Arch } from '../core/arch.ts';
import { KilnError } from '../core/errors.ts';
import { imageBuildHint, makeImageStore } from '../image/store.ts';
import type { GuestImageRef } from '../vm/driver.ts';

export type ImageResolver = (image: string, arch: Arch) => Promise<GuestImageRef>;

/** Images for the in-memory driver: nothing on disk, every name resolves. */
export const memoryImageResolver: ImageResolver = async (image, arch) => ({
  digest: `memory:${image}`,
  arch,
  kernelPath: `memory:${image}/kernel`,
  initrdPath: `memory:${image}/initrd`,
  kernelSha256: '',
  initrdSha256: '',
});

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
