# /etc/kiln/boot.sh of the ci image: sourced by kiln-init (busybox sh) before it answers READY, so the
# job starts with Docker ready. Everything a job writes (Docker's and containerd's data, buildah's
# storage, /work, /var/tmp) lives on the per-VM scratch disk (/dev/vda, sized by --disk): it is
# deleted with the VM and the disk limit holds for all of it.
#
# Registry mirror: the host passes `kiln.registry_mirror=<host:port>` (the address as the guest sees it)
# on the kernel command line (for docker.io), and `kiln.mirror.<registry>=<host:port>` for each other registry
# mirrored; the configs kiln rendered for them at image build time (src/oci/mirror-config.ts) are put in place
# with those names and addresses. Without the words, no mirror is configured.
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

mirror=
others=
for w in $(cat /proc/cmdline); do
  case "$w" in
    kiln.registry_mirror=*) mirror=${w#kiln.registry_mirror=} ;;
    kiln.mirror.*=*) others="$others ${w#kiln.mirror.}" ;;
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
# Mirrors of other registries: `kiln.mirror.<registry>=<ip:port>` (the host checked both). containerd and
# buildah get per-registry files, BuildKit a section; Docker 20.10 mirrors docker.io only, so the registry's
# name points at the mirror's IP (kiln forwards its ports 80 and 443 there too) and is an insecure registry.
insecure=
if [ -n "$others" ] && [ -d /etc/kiln/mirror-registry ]; then
  for o in $others; do
    r=${o%%=*}
    a=${o#*=}
    (cd /etc/kiln/mirror-registry && find . -type f) | while read -r f; do
      t=$(echo "${f#.}" | sed "s/kiln-registry-placeholder.invalid/$r/g")
      mkdir -p "${t%/*}"
      sed -e "s/kiln-registry-placeholder.invalid/$r/g" -e "s/kiln-registry-address-placeholder:65534/$a/g" "/etc/kiln/mirror-registry/$f" > "$t"
    done
    mkdir -p /etc/buildkit
    sed -e "s/kiln-registry-placeholder.invalid/$r/g" -e "s/kiln-registry-address-placeholder:65534/$a/g" /etc/kiln/mirror-registry.buildkitd.toml >> /etc/buildkit/buildkitd.toml
    printf '%s\t%s\n' "${a%:*}" "$r" >> /etc/hosts
    insecure="$insecure, \"http://$r\""
    step "ci-mirror $r $a"
  done
  mkdir -p /etc/docker
  if [ -n "$mirror" ] && [ -f /etc/docker/daemon.json ]; then
    sed -i "s|^\( *\"http://$mirror\"\)\$|\1$insecure|" /etc/docker/daemon.json
  else
    printf '{\n  "insecure-registries": [%s]\n}\n' "${insecure#, }" > /etc/docker/daemon.json
  fi
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
