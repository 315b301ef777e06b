/** The agent's port to guest images: a job names an image, the driver needs files and digests. */
import type { Arch } from '../core/arch.ts';
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
