/** Debian packages kiln needs, and the commands that tell whether they are there. */
export interface Prereq {
  pkg: string;
  /** A command that exists once the package is installed. */
  command: string;
  why: string;
}

export const RUNTIME_PREREQS: Prereq[] = [
  { pkg: 'qemu-system-x86', command: 'qemu-system-x86_64', why: 'x86-64 guests' },
  { pkg: 'qemu-system-arm', command: 'qemu-system-aarch64', why: 'arm64 guests' },
  { pkg: 'qemu-utils', command: 'qemu-img', why: 'copy-on-write VM disks' },
  { pkg: 'busybox-static', command: 'busybox', why: 'the minimal guest image' },
  { pkg: 'e2fsprogs', command: 'mkfs.ext4', why: 'guest disk file systems' },
  { pkg: 'util-linux', command: 'setpriv', why: 'VMs die with kiln (parent-death signal)' },
  { pkg: 'debootstrap', command: 'debootstrap', why: 'the full CI guest image' },
  { pkg: 'qemu-user-static', command: 'qemu-aarch64-static', why: 'building arm64 images on x86-64' },
  { pkg: 'binfmt-support', command: 'update-binfmts', why: 'building arm64 images on x86-64' },
  { pkg: 'docker-registry', command: 'docker-registry', why: 'the per-host registry mirror' },
  { pkg: 'nftables', command: 'nft', why: 'the guest egress filter (guests with a network never reach the host or private ranges)' },
  { pkg: 'socat', command: 'socat', why: 'one host connection per guest connection to the registry mirror' },
  { pkg: 'iproute2', command: 'ip', why: "the host's own networks, closed to guests" },
];

/** Only the test suite needs these: independent checkers and real servers. */
export const TEST_PREREQS: Prereq[] = [
  { pkg: 'skopeo', command: 'skopeo', why: 'independent OCI checker in tests' },
  { pkg: 'buildah', command: 'buildah', why: 'builds test images' },
  { pkg: 'postgresql', command: 'pg_ctlcluster', why: 'storage tests against a real PostgreSQL' },
  { pkg: 'chromium', command: 'chromium', why: 'dashboard tests in a real browser' },
  { pkg: 'cpio', command: 'cpio', why: 'independent check of guest initramfs archives' },
  { pkg: 'openssl', command: 'openssl', why: 'test certificates for TLS registries and token servers' },
];
