# /etc/kiln/after-job.sh of the ci image: sourced by kiln-init after the job, with its status in $status.
# A job that filled the VM's disk gets a line saying so on its stderr, since tools report ENOSPC in many ways.
if [ "$status" != 0 ] && [ -n "$KILN_WORK_MOUNTED" ]; then
  set -- $(df -Pk /mnt/disk 2>/dev/null | tail -n 1)
  if [ "${4:-1}" -lt 1024 ]; then
    echo "kiln: the job failed with the VM's disk full: No space left on device ($2 KiB disk, $4 KiB free; ask for more with --disk)" > /dev/kiln.stderr
  fi
fi
# With Docker's data in the warm cache (/cache), its daemons stop before kiln-init unmounts /cache, so the
# cache is saved whole (docs/caches.md).
if [ -n "$KILN_CACHE_TOOLS" ]; then
  for p in $(/bin/busybox pidof dockerd) $(/bin/busybox pidof containerd); do kill -TERM "$p" 2>/dev/null; done
  i=0
  while [ $i -lt 150 ] && { /bin/busybox pidof dockerd > /dev/null || /bin/busybox pidof containerd > /dev/null; }; do usleep 100000; i=$((i + 1)); done
  for m in /var/lib/docker /var/lib/containerd /var/lib/containers /root/.cargo/registry /var/cache/apt/archives; do umount "$m" 2>/dev/null; done
fi
