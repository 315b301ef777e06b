# /etc/kiln/after-job.sh of the ci image: sourced by kiln-init after the job, with its status in $status.
# A job that filled the VM's disk gets a line saying so on its stderr, since tools report ENOSPC in many ways.
if [ "$status" != 0 ] && [ -n "$KILN_WORK_MOUNTED" ]; then
  set -- $(df -Pk /mnt/disk 2>/dev/null | tail -n 1)
  if [ "${4:-1}" -lt 1024 ]; then
    echo "kiln: the job failed with the VM's disk full: No space left on device ($2 KiB disk, $4 KiB free; ask for more with --disk)" > /dev/kiln.stderr
  fi
fi
