# /etc/kiln/boot.sh of the ci image: sourced by kiln-init (busybox sh) before it answers READY, so the
# job starts with Docker ready. Everything a job writes (Docker's and containerd's data, buildah's
# storage, /work, /var/tmp) lives on the per-VM scratch disk (/dev/vda, sized by --disk): it is
# deleted with the VM and the disk limit holds for all of it.
#
# Registry mirror: the host passes `kiln.registry_mirror=<host:port>` (the address as the guest sees it)
# on the kernel command line; the configs kiln rendered for it at image build time (src/oci/mirror-config.ts)
# are put in place with that address. Without the word, no mirror is configured.
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
mkdir -p /dev/mqueue && mount -t mqueue mqueue /dev/mqueue 2>/dev/null
for m in overlay br_netfilter bridge veth nf_tables nft_chain_nat nft_compat xt_conntrack xt_MASQUERADE xt_addrtype ip_tables iptable_nat iptable_filter; do
  /sbin/modprobe -q "$m" 2>/dev/null
done
hostname -F /etc/hostname 2>/dev/null
step ci-modules

# The scratch disk: /dev/vda (kiln's driver attaches it first; the root disk is the second, /dev/vdb).
mkdir -p /mnt/disk
if [ -b /dev/vda ] && mount -t ext4 -o noinit_itable /dev/vda /mnt/disk; then
  for d in docker containerd containers work tmp; do mkdir -p "/mnt/disk/$d"; done
  chmod 1777 /mnt/disk/tmp
  mkdir -p /var/lib/docker /var/lib/containerd /var/lib/containers /work
  mount --bind /mnt/disk/docker /var/lib/docker
  mount --bind /mnt/disk/containerd /var/lib/containerd
  mount --bind /mnt/disk/containers /var/lib/containers
  mount --bind /mnt/disk/work /work
  mount --bind /mnt/disk/tmp /var/tmp
  KILN_WORK_MOUNTED=1
else
  step "ci-scratch-disk-missing: Docker's data stays on the root overlay"
fi
step ci-disk

# A warm cache (docs/caches.md): kiln-init mounted it at /cache. Docker's and containerd's data (BuildKit's
# included), buildah's storage and the usual tool caches go there instead of the scratch disk, so what a
# trusted job pulls, builds or downloads is there for the next job.
if [ -n "$cachedev" ] && grep -q ' /cache ' /proc/mounts; then
  for d in docker containerd containers npm pip go-mod go-build cargo-registry apt-archives; do mkdir -p "/cache/$d"; done
  mount --bind /cache/docker /var/lib/docker
  mount --bind /cache/containerd /var/lib/containerd
  mount --bind /cache/containers /var/lib/containers
  mkdir -p /root/.cargo/registry /var/cache/apt/archives /root/.config/pip /root/.config/go
  mount --bind /cache/cargo-registry /root/.cargo/registry
  mount --bind /cache/apt-archives /var/cache/apt/archives
  printf 'cache=/cache/npm\n' > /root/.npmrc
  printf '[global]\ncache-dir = /cache/pip\n' > /etc/pip.conf
  printf 'GOMODCACHE=/cache/go-mod\nGOCACHE=/cache/go-build\n' > /root/.config/go/env
  # Debian's apt deletes downloaded packages after install; keep them in the cache.
  rm -f /etc/apt/apt.conf.d/docker-clean
  printf 'Binary::apt::APT::Keep-Downloaded-Packages "true";\nAPT::Keep-Downloaded-Packages "true";\n' > /etc/apt/apt.conf.d/10kiln-cache
  KILN_CACHE_TOOLS=1
  step ci-cache
fi

for w in $(cat /proc/cmdline); do
  case "$w" in
    kiln.registry_mirror=*) mirror=${w#kiln.registry_mirror=} ;;
  esac
done
if [ -n "$mirror" ] && [ -d /etc/kiln/mirror ]; then
  (cd /etc/kiln/mirror && find . -type f) | while read -r f; do
    t=${f#.}
    mkdir -p "${t%/*}"
    sed "s/kiln-mirror-placeholder:65535/$mirror/g" "/etc/kiln/mirror/$f" > "$t"
  done
  step "ci-mirror $mirror"
fi

# Docker's daemons must not inherit init's OOM immunity.
(echo 0 > /proc/self/oom_score_adj; exec containerd > /run/containerd.log 2>&1) &
(echo 0 > /proc/self/oom_score_adj; exec dockerd --containerd=/run/containerd/containerd.sock > /run/dockerd.log 2>&1) &
dockerd_pid=$!
docker_ready=
i=0
while [ $i -lt 1200 ]; do
  if /usr/bin/docker version --format '{{.Server.Version}}' > /dev/null 2>&1; then docker_ready=1; break; fi
  kill -0 $dockerd_pid 2>/dev/null || break
  usleep 100000
  i=$((i + 1))
done
if [ -n "$docker_ready" ]; then
  step docker-ready
else
  step "docker-failed: dockerd did not answer; its last log lines follow"
  tail -n 15 /run/dockerd.log | sed 's/^/kiln-init: dockerd: /' > /dev/console
fi
