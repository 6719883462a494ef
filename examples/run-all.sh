#!/usr/bin/env bash
# Runs every example pipeline through a running pipeline service and prints the results.
# Usage: examples/run-all.sh FLOWPLANE_BIN SAMPLES_DIR [RESULTS_DIR]
#   FLOWPLANE_BIN  the flowplane CLI
#   SAMPLES_DIR    inputs made by examples/make-samples.py
#   RESULTS_DIR    when given, each pipeline's JSON results are written there and compared
#                  with examples/expected/; any difference fails the run
# FLOWPLANE_PIPELINE (and FLOWPLANE_TOKEN) say where the service is.
set -euo pipefail
cli=$1 samples=$2 results=${3:-}
here=$(cd "$(dirname "$0")" && pwd)
declare -A inputs=(
  [audio-chain]="audio=$samples/tone.wav"
  [mixed]="audio=$samples/tone.wav control=$samples/control.jsonl"
  [video-grayscale]="video=$samples/frames.ppm"
  [calculator]="requests=$samples/calc.jsonl"
  [tensor]="tensor=$samples/tensor.npy"
  [fan-out-fan-in]="audio=$samples/tone.wav control=$samples/control.jsonl"
  [text-and-digest]="text=$samples/lines.txt data=$samples/blob.bin"
)
status=0
# `flowplane run` exits 3 when a chunk failed; that is right only for a pipeline whose
# expected results hold an error (the calculator's division by zero).
ran() {
  local rc=$1 name=$2
  if [ "$rc" -eq 0 ] || { [ "$rc" -eq 3 ] && grep -q '"event":"error"' "$here/expected/$name.jsonl"; }; then
    return 0
  fi
  echo "   flowplane run exited $rc" >&2
  return 1
}
for name in audio-chain mixed video-grayscale calculator tensor fan-out-fan-in text-and-digest; do
  args=()
  for i in ${inputs[$name]}; do args+=(--input "$i"); done
  echo "== $name"
  rc=0
  if [ -n "$results" ]; then
    mkdir -p "$results"
    "$cli" run "$here/pipelines/$name.yaml" "${args[@]}" --output json > "$results/$name.jsonl" || rc=$?
    ran "$rc" "$name" || status=1
    if diff -u "$here/expected/$name.jsonl" "$results/$name.jsonl"; then
      n=$(grep -c '"event":"result"' "$results/$name.jsonl" || true)
      echo "   $n result$([ "$n" -eq 1 ] || echo s), exactly as expected"
    else
      echo "   results differ from examples/expected/$name.jsonl" >&2
      status=1
    fi
  else
    "$cli" run "$here/pipelines/$name.yaml" "${args[@]}" || rc=$?
    ran "$rc" "$name" || status=1
  fi
done
exit $status
