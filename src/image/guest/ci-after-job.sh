# /etc/kiln/after-job.sh of the ci image: sourced by kiln-init after the job, with its status in $status.
# A job that filled the VM's disk gets a line saying so on its stderr, since tools report ENOSPC in many ways.
if [ "$status" != 0 ] && [ -n "$KILN_WORK_MOUNTED" ]; then
  set -- $(df -Pk /mnt/disk 2>/dev/null | tail -n 1)
  if [ "${4:-1}" -lt 1024 ]; then
    echo "kiln: the job failed with the VM's disk full: No space left on device ($2 KiB disk, $4 KiB free; ask for more with --disk)" > /dev/kiln.stderr
  fi
fi
# A warm start's dockerd watcher (ci-boot.sh) stops first, so the daemons' stop below is not taken for a failure;
# what it found reaches the job's stderr now that the job has let go of that port.
[ -n "$dockerd_watcher" ] && kill "$dockerd_watcher" 2>/dev/null
[ -f /run/kiln-dockerd-failed ] && cat /run/kiln-dockerd-failed > /dev/kiln.stderr
# With Docker's data in the warm cache (/cache), its daemons stop before kiln-init unmounts /cache, so the
# cache is saved whole (docs/caches.md). dockerd first (it uses containerd), then containerd. A dockerd that
# has not served yet (a warm start's restart behind a job shorter than it) did nothing for the job and is killed:
# stopped, it would first finish its start, 10-14 s under TCG, past the bound below, and the cache would stay
# in use and unsaved. One that served gets TERM and up to 15 s; if it is still there, /cache stays in use and
# is not saved (kiln-init says so), rather than saving Docker's data mid-shutdown.
if [ -n "$KILN_CACHE_TOOLS" ]; then
  sig=TERM
  grep -q -e 'API listen on' -e 'Daemon has completed initialization' /run/dockerd.log 2>/dev/null || sig=KILL
  for p in $(/bin/busybox pidof dockerd); do kill -$sig "$p" 2>/dev/null; done
  i=0
  while [ $i -lt 150 ] && /bin/busybox pidof dockerd > /dev/null; do usleep 100000; i=$((i + 1)); done
  for p in $(/bin/busybox pidof containerd); do kill -TERM "$p" 2>/dev/null; done
  i=0
  while [ $i -lt 50 ] && /bin/busybox pidof containerd > /dev/null; do usleep 100000; i=$((i + 1)); done
  for m in /var/lib/docker /var/lib/containerd /var/lib/containers /root/.cargo/registry /var/cache/apt/archives; do umount "$m" 2>/dev/null; done
fi
