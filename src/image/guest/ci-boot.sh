# /etc/kiln/boot.sh of the ci image: sourced by kiln-init (busybox sh) before it answers READY, so the
# job starts with Docker ready. Everything a job writes (Docker's and containerd's data, buildah's
# storage, /work, /var/tmp) lives on the per-VM scratch disk (/dev/vda, sized by --disk): it is
# deleted with the VM and the disk limit holds for all of it.
#
# Registry mirrors: a cold boot gets `kiln.registry_mirror=<host:port>` (the address as the guest sees it)
# on the kernel command line for docker.io, and `kiln.mirror.<registry>=<host:port>` for each other registry
# mirrored; the configs kiln rendered for them at image build time (src/oci/mirror-config.ts) are put in place
# with those names and addresses. Without the words, no mirror is configured.
#
# Warm starts (docs/ARCHITECTURE.md, "Warm starts"): a VM restored from a snapshot of this image wakes with
# the template's Docker, which was started before any VM existed (and with no mirror words). kiln-init runs
# kiln_after_restore (named in KILN_RESTORE_HOOK) once the VM has its own entropy, clock and names: it writes
# the mirror configs for the addresses the host sent (MIRROR line for docker.io, MIRRORS line for the other
# registries, the same `<registry>=<host:port>` words as on the command line), and restarts dockerd with its
# identity files removed, so each VM's engine gets a new ID (Docker 20.10 derives it from /etc/docker/key.json,
# 23+ keeps it in /var/lib/docker/engine-id) and reads the new daemon.json (its insecure registries included).
# The restart runs behind the job: the hook makes /var/run/docker.sock itself, listening, and hands it to the
# new dockerd (`-H fd://`, the systemd socket-activation convention), so the job starts at once and a docker
# command it runs before dockerd is up waits in the socket's queue instead of failing. The restarted dockerd
# runs with --iptables=false: setting its chains up again took 10 of its 14 s under TCG (one iptables process
# per rule), and the template's dockerd left them in place, with the catch-all rules below for the networks a
# job creates (kiln_container_nat). containerd keeps running unless the VM has a cache: nothing of it is per VM
# (its per-registry hosts files are read at each pull).
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
# trusted job pulls, builds or downloads is there for the next job. A cold boot binds them here, before the
# daemons start; a VM restored from a template with a cache slot gets /cache at the host's CACHE line, and
# the restore hook binds them with the daemons stopped (the binds lie over the scratch disk's).
kiln_use_cache() {
  [ -n "$cachedev" ] && grep -q ' /cache ' /proc/mounts || return 0
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
}
kiln_use_cache

mirror=
others=
kiln_apply_mirror() {
  [ -n "$1" ] && [ -d /etc/kiln/mirror ] || return 0
  (cd /etc/kiln/mirror && find . -type f) | while read -r f; do
    t=${f#.}
    mkdir -p "${t%/*}"
    sed "s/kiln-mirror-placeholder:65535/$1/g" "/etc/kiln/mirror/$f" > "$t" || exit 1
  done || return 1
  step "ci-mirror $1"
}

# Mirrors of other registries: `<registry>=<ip:port>` words (the host checked both), from the kernel command
# line (cold boot) or the MIRRORS line (restore); $1 is the docker.io mirror's address, if any. containerd and
# buildah get per-registry files, BuildKit a section; Docker 20.10 mirrors docker.io only, so the registry's
# name points at the mirror's IP (kiln forwards its ports 80 and 443 there too) and is an insecure registry
# (dockerd reads that at its start: the cold boot starts it after this, the restore hook restarts it).
kiln_apply_other_mirrors() {
  [ -n "$2" ] && [ -d /etc/kiln/mirror-registry ] || return 0
  insecure=
  for o in $2; do
    r=${o%%=*}
    a=${o#*=}
    (cd /etc/kiln/mirror-registry && find . -type f) | while read -r f; do
      t=$(echo "${f#.}" | sed "s/kiln-registry-placeholder.invalid/$r/g")
      mkdir -p "${t%/*}"
      sed -e "s/kiln-registry-placeholder.invalid/$r/g" -e "s/kiln-registry-address-placeholder:65534/$a/g" "/etc/kiln/mirror-registry/$f" > "$t" || exit 1
    done || return 1
    mkdir -p /etc/buildkit
    sed -e "s/kiln-registry-placeholder.invalid/$r/g" -e "s/kiln-registry-address-placeholder:65534/$a/g" /etc/kiln/mirror-registry.buildkitd.toml >> /etc/buildkit/buildkitd.toml || return 1
    printf '%s\t%s\n' "${a%:*}" "$r" >> /etc/hosts
    insecure="$insecure, \"http://$r\""
    step "ci-mirror $r $a"
  done
  mkdir -p /etc/docker
  if [ -n "$1" ] && [ -f /etc/docker/daemon.json ]; then
    sed -i "s|^\( *\"http://$1\"\)\$|\1$insecure|" /etc/docker/daemon.json
  else
    printf '{\n  "insecure-registries": [%s]\n}\n' "${insecure#, }" > /etc/docker/daemon.json
  fi
}

# Starts containerd in the background, without init's OOM immunity.
kiln_start_containerd() {
  (echo 0 > /proc/self/oom_score_adj; exec containerd > /run/containerd.log 2>&1 3>&-) &
  containerd_pid=$!
}

# Makes /var/run/docker.sock (root:docker 0660, as dockerd makes it) listening on fd 3 and execs the rest of the
# command line with LISTEN_FDS=1 and LISTEN_PID set to its own pid, which exec keeps: dockerd -H fd:// then
# serves that socket. The socket is bound under another name and renamed into place once it listens, so a
# client that finds the path never meets a socket that refuses it. perl is in every Debian root (perl-base is
# essential), IO::Socket::UNIX with it.
KILN_SOCKET_HOLDER='
  use IO::Socket::UNIX;
  BEGIN { $^F = 3 }
  my $path = "/var/run/docker.sock";
  my $tmp = "$path.kiln-new";
  unlink $tmp;
  my $s = IO::Socket::UNIX->new(Type => SOCK_STREAM(), Local => $tmp, Listen => 4096) or die "kiln: cannot listen on $tmp: $!\n";
  fileno($s) == 3 or die "kiln: the docker socket is fd " . fileno($s) . ", not 3\n";
  my $gid = getgrnam("docker");
  chown 0, (defined $gid ? $gid : 0), $tmp;
  chmod 0660, $tmp;
  rename $tmp, $path or die "kiln: cannot move the docker socket to $path: $!\n";
  $ENV{LISTEN_FDS} = 1;
  $ENV{LISTEN_PID} = $$;
  exec @ARGV or die "kiln: cannot run $ARGV[0]: $!\n";
'

# Forwarding and NAT for every container network, not only those a dockerd made rules for: a restored VM's
# dockerd runs without iptables, so a network a job creates there (docker network create, compose) gets no
# rules of its own. Its containers then reach the outside through the guest's eth0 like the default bridge's,
# and each other through the bridge. Set once dockerd has set its own (at its start it makes FORWARD drop), in
# every cold boot, so a warm-start template's snapshot carries them. What is given up: Docker's isolation
# between two of a job's networks, inside a VM that is the job's alone (the host's egress filter is unchanged).
kiln_container_nat() {
  iptables -P FORWARD ACCEPT && iptables -t nat -A POSTROUTING -o eth0 -j MASQUERADE
}

# Restarts dockerd behind the job (see the head of this file): the socket is listening when this returns. A
# watcher notes it if dockerd dies before it serves: on the console, and in /run/kiln-dockerd-failed, which the
# after-job hook copies to the job's stderr (a virtio port has one opener at a time: the job holds that one).
kiln_restart_dockerd_held() {
  # The killed dockerd's socket file stays behind: gone first, so the wait below sees the new one. (A job that
  # found the old file would be refused: nothing listens on it.)
  rm -f /var/run/docker.sock
  : > /run/dockerd.log
  (echo 0 > /proc/self/oom_score_adj; exec 3>&-; exec perl -e "$KILN_SOCKET_HOLDER" dockerd -H fd:// --iptables=false --containerd=/run/containerd/containerd.sock) < /dev/null > /run/dockerd.log 2>&1 &
  dockerd_pid=$!
  i=0
  while [ ! -S /var/run/docker.sock ] && [ $i -lt 1000 ]; do
    kill -0 $dockerd_pid 2>/dev/null || return 1
    usleep 10000
    i=$((i + 1))
  done
  [ -S /var/run/docker.sock ] || return 1
  (
    exec 3>&-
    i=0
    while [ $i -lt 3000 ] && ! grep -q -e 'API listen on' -e 'Daemon has completed initialization' /run/dockerd.log 2>/dev/null; do
      i=$((i + 1))
      if ! kill -0 $dockerd_pid 2>/dev/null; then
        echo "kiln: dockerd did not come back after the warm start, so docker commands in this job failed (its last log lines are on the VM console)" > /run/kiln-dockerd-failed
        tail -n 15 /run/dockerd.log | sed 's/^/kiln-init: dockerd: /' > /dev/console
        exit 0
      fi
      usleep 200000
    done
  ) < /dev/null > /dev/null 2>&1 &
  dockerd_watcher=$!
  return 0
}

# Starts dockerd (in the background, without init's OOM immunity or its channel) and waits until it answers.
kiln_start_dockerd() {
  (echo 0 > /proc/self/oom_score_adj; exec dockerd --containerd=/run/containerd/containerd.sock > /run/dockerd.log 2>&1 3>&-) &
  dockerd_pid=$!
  i=0
  # Asking costs the guest's CPU: a docker CLI (a large Go program) started every 50 ms competed with dockerd's
  # own start under TCG. dockerd logs "API listen on" once it serves, and a grep of its log is cheap: the CLI
  # is asked after that line, or once a second in case a Docker version words it differently.
  while [ $i -lt 2400 ]; do
    if [ $((i % 20)) -eq 19 ] || grep -q 'API listen on' /run/dockerd.log 2>/dev/null; then
      /usr/bin/docker version --format '{{.Server.Version}}' > /dev/null 2>&1 && return 0
    fi
    kill -0 $dockerd_pid 2>/dev/null || return 1
    usleep 50000
    i=$((i + 1))
  done
  return 1
}

# The mirrors the host sent a restored VM (MIRROR, MIRRORS lines: kiln-init sets kiln_mirror, kiln_mirrors),
# configured as a cold boot configures the kernel command line's.
kiln_restore_mirrors() {
  kiln_apply_mirror "$kiln_mirror" && kiln_apply_other_mirrors "$kiln_mirror" "$kiln_mirrors"
}

kiln_after_restore() {
  kiln_restore_mirrors || { kiln_restore_failed=mirror; return 1; }
  if [ -n "$dockerd_pid" ]; then
    # Killed, not stopped: a clean shutdown takes seconds under TCG (it tears down the network it set up, which
    # the next dockerd sets up again), and this VM has no container, no pull and no build to lose. The next
    # dockerd finds the bridge and its rules in place and a pid file of a process that is gone.
    kill -KILL $dockerd_pid 2>/dev/null
    wait $dockerd_pid 2>/dev/null
  fi
  if [ -n "$cachedev" ]; then
    # This VM's cache: containerd's data moves there too, so it restarts (before dockerd, which waits for it).
    # Its socket file goes first and the job waits for the new one: a client finding the killed one is refused.
    if [ -n "$containerd_pid" ]; then
      kill -KILL $containerd_pid 2>/dev/null
      wait $containerd_pid 2>/dev/null
    fi
    rm -f /run/containerd/containerd.sock
    kiln_use_cache
    kiln_start_containerd
    i=0
    while [ ! -S /run/containerd/containerd.sock ] && [ $i -lt 1000 ]; do
      kill -0 $containerd_pid 2>/dev/null || break
      usleep 10000
      i=$((i + 1))
    done
    if [ ! -S /run/containerd/containerd.sock ]; then
      kiln_restore_failed=containerd
      tail -n 15 /run/containerd.log | sed 's/^/kiln-init: containerd: /' > /dev/console
      return 1
    fi
  fi
  # After the cache's binds: an engine-id kept in the cache (Docker 23+) would be another VM's.
  rm -f /etc/docker/key.json /var/lib/docker/engine-id
  if ! kiln_restart_dockerd_held; then
    kiln_restore_failed=docker
    tail -n 15 /run/dockerd.log | sed 's/^/kiln-init: dockerd: /' > /dev/console
    return 1
  fi
  step docker-renewing
}
KILN_RESTORE_HOOK=kiln_after_restore

for w in $(cat /proc/cmdline); do
  case "$w" in
    kiln.registry_mirror=*) mirror=${w#kiln.registry_mirror=} ;;
    kiln.mirror.*=*) others="$others ${w#kiln.mirror.}" ;;
  esac
done
kiln_apply_mirror "$mirror"
kiln_apply_other_mirrors "$mirror" "$others"

# Docker's daemons must not inherit init's OOM immunity.
kiln_start_containerd
docker_ready=
kiln_start_dockerd && docker_ready=1
if [ -n "$docker_ready" ] && ! kiln_container_nat; then
  docker_ready=
  KILN_NOT_READY=container-nat
  step "docker-nat-failed: the catch-all forwarding and NAT rules for container networks could not be set"
elif [ -n "$docker_ready" ]; then
  step docker-ready
else
  KILN_NOT_READY=docker
  step "docker-failed: dockerd did not answer; its last log lines follow"
  tail -n 15 /run/dockerd.log | sed 's/^/kiln-init: dockerd: /' > /dev/console
fi
