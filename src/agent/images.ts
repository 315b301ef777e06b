/**
 * The agent's port to guest images: a job names an image, the driver needs files and digests. Two
 * resolvers: kiln's image store on this host (the QEMU driver) and the in-memory driver's names.
 */
import type { Arch } from '../core/arch.ts';
import type { HostImageMsg } from '../core/agent-protocol.ts';
import { KilnError } from '../core/errors.ts';
import { imageBuildHint, makeImageStore } from '../image/store.ts';
import type { GuestImageRef } from '../vm/driver.ts';

export interface ImageResolver {
  (image: string, arch: Arch): Promise<GuestImageRef>;
  /** The image versions this host holds, newest first, as its agent reports them (absent: not reported). */
  held?(): HostImageMsg[];
}

/** At most this many image versions are reported per host (the protocol's limit). */
const HELD_REPORTED = 200;

/** Images for the in-memory driver: nothing on disk, every name resolves. */
export const memoryImageResolver: ImageResolver = async (image, arch) => ({
  digest: `memory:${image}`,
  arch,
  kernelPath: `memory:${image}/kernel`,
  initrdPath: `memory:${image}/initrd`,
  kernelSha256: '',
  initrdSha256: '',
});

/** The in-memory driver's images for one agent: it "holds" each image a job of it has named. */
export function makeMemoryImageResolver(): ImageResolver {
  const held = new Map<string, HostImageMsg>();
  const resolve: ImageResolver = async (image, arch) => {
    const ref = await memoryImageResolver(image, arch);
    if (!held.has(`${image} ${arch}`) && held.size < HELD_REPORTED) held.set(`${image} ${arch}`, { profile: image, digest: ref.digest, arch, created: new Date().toISOString() });
    return ref;
  };
  resolve.held = () => [...held.values()].reverse();
  return resolve;
}

/** Guest images from kiln's image store: `default` is the newest minimal image for the arch. */
export function makeStoreImageResolver(dataDir: string): ImageResolver {
  const store = makeImageStore(dataDir);
  const resolve: ImageResolver = async (image: string, arch: Arch) => {
    const m = store.resolve(image === 'default' ? 'minimal' : image, arch);
    if (!m) {
      throw new KilnError('image.not_found', `no ${arch} image "${image}" on this host`, { hint: `on that host, ${imageBuildHint(image === 'default' ? 'minimal' : image, arch)}` });
    }
    await store.check(m);
    return store.toRef(m);
  };
  // The store's manifests (small JSON files), read at each report: an image built or removed with the CLI
  // while the agent runs shows at its next status.
  resolve.held = () =>
    store
      .list()
      .slice(0, HELD_REPORTED)
      .map((m) => ({
        profile: m.profile,
        digest: m.digest,
        arch: m.arch,
        created: m.created,
        bytes: m.kernel.size + m.initrd.size + (m.rootDisk?.size ?? 0),
      }));
  return resolve;
}
