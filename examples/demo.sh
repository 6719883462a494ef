#!/usr/bin/env bash
# `make demo`: starts a control plane, two processor hosts and the pipeline service on
# 127.0.0.1, streams every example pipeline through them with the CLI, prints the
# results, runs the example standing pipeline (with a connector host) and checks its
# output, and stops everything cleanly -- also on Ctrl-C or a failure.
# Usage: examples/demo.sh BIN_DIR        (BIN_DIR holds the five binaries)
# Ports: FLOWPLANE_DEMO_PORT (default 47051) and the next ones; DEMO_CHECK=1 compares
# every result with examples/expected/ instead of printing it; DEMO_UPDATE_EXPECTED=1 rewrites
# examples/expected/ from this run's results (a deliberate act, like the proto baseline).
set -euo pipefail
bin=$(cd "$1" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
base=${FLOWPLANE_DEMO_PORT:-47051}
cp_addr=127.0.0.1:$base
work=$(mktemp -d)
pids=()

stop_all() {
  local status=$?
  trap - EXIT INT TERM
  if [ ${#pids[@]} -gt 0 ]; then
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
  fi
  if [ $status -ne 0 ]; then
    echo "demo failed (status $status); service logs:" >&2
    tail -n 20 "$work"/*.log >&2 || true
  fi
  rm -rf "$work"
  exit $status
}
trap stop_all EXIT
trap 'exit 130' INT TERM

start() { # name, command...
  local name=$1; shift
  FLOWPLANE_LOG=${FLOWPLANE_LOG:-warn} "$@" >"$work/$name.log" 2>&1 &
  pids+=($!)
}

wait_healthy() { # address
  for _ in $(seq 1 100); do
    "$bin/flowplane" health "$1" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "no healthy server at $1 after 10s" >&2
  return 1
}

echo "starting the control plane on $cp_addr, processors on :$((base + 10)) and :$((base + 11)), pipeline on :$((base + 20))"
start control-plane "$bin/flowplane-control-plane" --listen "$cp_addr" --lease-ttl 6s --data-dir "$work/control-plane-data"
wait_healthy "$cp_addr"
for i in 0 1; do
  start "processor-$i" "$bin/flowplane-processor" --listen "127.0.0.1:$((base + 10 + i))" \
    --control-plane "http://$cp_addr" --id "demo-processor-$i"
done
start pipeline "$bin/flowplane-pipeline" --listen "127.0.0.1:$((base + 20))" --control-plane "http://$cp_addr"
wait_healthy "127.0.0.1:$((base + 10))"
wait_healthy "127.0.0.1:$((base + 11))"
wait_healthy "127.0.0.1:$((base + 20))"
export FLOWPLANE_CONTROL_PLANE=http://$cp_addr FLOWPLANE_PIPELINE=http://127.0.0.1:$((base + 20))
# Both processors registered and healthy before any session starts.
for _ in $(seq 1 100); do
  healthy=$("$bin/flowplane" components list --kind processor --status healthy --output json | grep -c '"id"' || true)
  [ "$healthy" -ge 2 ] && break
  sleep 0.1
done
"$bin/flowplane" components list
python3 "$here/make-samples.py" "$work/samples"
for _ in $(seq 1 50); do
  "$bin/flowplane" validate "$here/pipelines/audio-chain.yaml" >/dev/null 2>&1 && break
  sleep 0.1
done
if [ "${DEMO_UPDATE_EXPECTED:-0}" = 1 ]; then
  # `make examples-expected`: this run's results become examples/expected (review the diff).
  "$here/run-all.sh" "$bin/flowplane" "$work/samples" "$work/results" >/dev/null 2>&1 || true
  # Differences are the point here, but every run must have completed: a file without its
  # closing summary line (a run that failed as a whole) rewrites nothing.
  for f in "$here"/expected/*.jsonl; do
    r="$work/results/$(basename "$f")"
    grep -q '"event":"summary"' "$r" 2>/dev/null || { echo "no complete run for $(basename "$f"); examples/expected/ left as it was" >&2; exit 1; }
  done
  cp "$work/results"/*.jsonl "$here/expected/"
  echo "examples/expected/ rewritten from this run; review it with git diff"
elif [ "${DEMO_CHECK:-0}" = 1 ]; then
  "$here/run-all.sh" "$bin/flowplane" "$work/samples" "$work/results"
else
  "$here/run-all.sh" "$bin/flowplane" "$work/samples"
fi

# A standing pipeline: runs on its own, fed by the generator source on a connector host,
# delivering to the file consumer; the pipeline service above is its runner.
echo "standing pipeline: a connector host on :$((base + 30)), then examples/standing/generator-calculator.yaml"
start connect "$bin/flowplane-connect" --listen "127.0.0.1:$((base + 30))" \
  --control-plane "http://$cp_addr" --id demo-connect
wait_healthy "127.0.0.1:$((base + 30))"
standing="$work/generator-calculator.yaml"
sed "s#/tmp/flowplane-demo/#$work/standing/#" "$here/standing/generator-calculator.yaml" >"$standing"
"$bin/flowplane" pipelines apply "$standing"
committed=0
for _ in $(seq 1 600); do
  committed=$("$bin/flowplane" pipelines offsets generator-calculator --output json 2>/dev/null |
    python3 -c 'import json, sys; print(sum(json.load(sys.stdin).get("offsets", {}).values()))' 2>/dev/null || echo 0)
  [ "$committed" -ge 2000 ] && break
  sleep 0.1
done
[ "$committed" -ge 2000 ] || { echo "the standing pipeline committed $committed of 2000 records in 60s" >&2; exit 1; }
"$bin/flowplane" pipelines get generator-calculator
# Checked in every demo run: each record once, in offset order per partition, each
# result what json.calculator makes of the generator's request.
python3 - "$work/standing/result.jsonl" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
last, seen = {}, set()
for row in rows:
    lineage, result = row["lineage"], row["payload"]["result"]
    p, o = lineage["partition"], lineage["offset"]
    assert (p, o) not in seen, f"partition {p} offset {o} twice"
    assert o > last.get(p, -1), f"partition {p} offset {o} out of order"
    seen.add((p, o)); last[p] = o
    a, b = o % 1000 + 1, (p + o) % 9 + 1
    want = [a + b, a - b, a * b, a / b][o % 4]
    assert abs(result - want) < 1e-9, f"partition {p} offset {o}: {result}, want {want}"
assert seen == {(p, o) for p in range(2) for o in range(1000)}, f"{len(seen)} of 2000 records"
print(f"standing pipeline: {len(rows)} results in {sys.argv[1]}, each record once, in order, all correct")
PY
"$bin/flowplane" pipelines delete generator-calculator

echo "demo done; stopping the platform"
