# The stand-in Actions runner as a guest shell script (busybox sh, wget, base64, sed), for the real-VM test:
# it decodes the JIT config (base64 JSON map of base64 files) as run.sh does, connects to the GitHub double,
# takes one job, reports it done and exits 0; if its registration is removed it exits 0 as well.
# (No `wget -T`: it crashes the static busybox of Debian 12.)
set -u
cfg=$(printf %s "$KILN_RUNNER_JITCONFIG" | base64 -d)
field() { printf %s "$1" | sed -n "s/.*\"$2\":\"\([^\"]*\)\".*/\1/p"; }
runner=$(field "$cfg" '\.runner' | base64 -d)
creds=$(field "$cfg" '\.credentials' | base64 -d)
id=$(printf %s "$runner" | sed -n 's/.*"agentId":\([0-9]*\).*/\1/p')
url=$(field "$runner" serverUrl)
secret=$(field "$creds" secret)
post() { wget -q -O - --header 'content-type: application/json' --post-data "$2" "$url$1"; }
n=0
until post /_runner/connect "{\"runnerId\":$id,\"secret\":\"$secret\"}" >/dev/null; do
  n=$((n + 1))
  [ "$n" -gt 60 ] && { echo "could not connect to $url" >&2; exit 1; }
  sleep 1
done
echo "Connected to GitHub as runner $id"
while :; do
  r=$(post /_runner/next "{\"runnerId\":$id}") || { sleep 1; continue; }
  case "$r" in
    *'"exit"'*) echo "Runner removed; exiting"; exit 0 ;;
    *'"job"'*)
      job=$(printf %s "$r" | sed -n 's/.*"job":\([0-9]*\).*/\1/p')
      echo "Running job $job on $(uname -m)"
      post /_runner/done "{\"runnerId\":$id,\"jobId\":$job}" >/dev/null
      echo "Job $job completed with result: Succeeded"
      exit 0 ;;
  esac
done
