#!/usr/bin/env bash
# The figures behind the manifests' memory requests and limits (deploy/k8s/README.md):
# starts a control plane, one processor host and the pipeline on 127.0.0.1 from BIN_DIR
# (release binaries), reads each one's resident memory idle, then runs CLIENTS parallel
# clients that each stream every example pipeline ROUNDS times, and reads the peak
# (VmHWM) and the resident memory after the load.
# Usage: deploy/k8s/measure-rss.sh BIN_DIR [CLIENTS] [ROUNDS]      (ports 48051..48071)
set -euo pipefail
bin=$(cd "$1" && pwd)
clients=${2:-4} rounds=${3:-5}
repo=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
pids=()
trap 'kill -TERM "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT

wait_healthy() {
  for _ in $(seq 1 100); do
    "$bin/flowplane" health "$1" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "no healthy server at $1 after 10s" >&2
  return 1
}
kib() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }
report() { # label
  printf '%-10s' "$1"
  for i in 0 1 2; do
    printf '  %s RSS %6d KiB HWM %6d KiB' "${names[$i]}" "$(kib "${pids[$i]}" VmRSS)" "$(kib "${pids[$i]}" VmHWM)"
  done
  echo
}

names=(control-plane processor pipeline)
FLOWPLANE_LOG=warn "$bin/flowplane-control-plane" --listen 127.0.0.1:48051 >"$work/cp.log" 2>&1 &
pids+=($!)
wait_healthy 127.0.0.1:48051
FLOWPLANE_LOG=warn "$bin/flowplane-processor" --listen 127.0.0.1:48061 \
  --control-plane http://127.0.0.1:48051 >"$work/proc.log" 2>&1 &
pids+=($!)
FLOWPLANE_LOG=warn "$bin/flowplane-pipeline" --listen 127.0.0.1:48071 \
  --control-plane http://127.0.0.1:48051 >"$work/pipe.log" 2>&1 &
pids+=($!)
wait_healthy 127.0.0.1:48061
wait_healthy 127.0.0.1:48071
export FLOWPLANE_PIPELINE=http://127.0.0.1:48071
python3 "$repo/examples/make-samples.py" "$work/samples" >/dev/null
for _ in $(seq 1 50); do
  "$bin/flowplane" validate "$repo/examples/pipelines/audio-chain.yaml" >/dev/null 2>&1 && break
  sleep 0.1
done
report idle
started=$(date +%s)
for c in $(seq 1 "$clients"); do
  (for _ in $(seq 1 "$rounds"); do
    "$repo/examples/run-all.sh" "$bin/flowplane" "$work/samples" >>"$work/results.$c"
  done) &
  loaders+=($!)
done
wait "${loaders[@]}"
report loaded
results=$(cat "$work"/results.* | grep -vc '^==' || true)
echo "load: $clients clients x $rounds rounds of the 7 example pipelines, $results result lines, in $(( $(date +%s) - started )) s"
