#!/usr/bin/env bash
# `make compose-test`: the platform deployed the way users deploy it, tested for real.
#   1 build the image, make the dev certificates and role tokens, start the compose stack (project
#     flowplane-ci) with mutual TLS and role tokens, wait for health; a client without a
#     certificate, or in plaintext, is refused; without a token UNAUTHENTICATED, with another
#     role's token PERMISSION_DENIED
#   2 stream every example pipeline through the containers with the CLI from the host, exact outputs
#   3 docker kill the processor serving a long session mid-stream: the session completes on the
#     other replica, every result exactly once and in order, and the pipeline counts a failover
#   4 restart the control-plane container: both processors register again within one heartbeat
#     interval, and a new session works
#   5 every series the Grafana dashboard queries is exported by some service (before step 6
#     restarts the pipeline, whose failover counter exists only once it has counted one)
#   6 a standing pipeline (generator -> json.calculator -> file consumer on the connector host),
#     applied with the CLI: kill -9 the pipeline container (its runner) mid-stream and start it
#     again; every record is delivered once, in offset order, each result right; then restart the
#     control plane: the pipeline and its offsets are still there (its data volume); delete it
#   7 stop the stack (always, from a trap) and check that no container is left
# Skips (exit 0) only when no Docker engine answers. Every wait is bounded; each step reports its
# time. A step whose prerequisites are not built yet reports PENDING, which fails the run unless
# COMPOSE_TEST_ALLOW_PENDING=1.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PROJECT="${COMPOSE_TEST_PROJECT:-flowplane-ci}"
HEALTH_TIMEOUT_S="${HEALTH_TIMEOUT_S:-120}"
SESSION_TIMEOUT_S="${SESSION_TIMEOUT_S:-180}"
FAILOVER_LINES="${FAILOVER_LINES:-200000}"
# Step 6: records per partition and their rate (per partition), so the kill lands mid-stream.
STANDING_RECORDS="${STANDING_RECORDS:-3000}"
STANDING_RATE="${STANDING_RATE:-300}"
STANDING_TIMEOUT_S="${STANDING_TIMEOUT_S:-120}"
# Measuring from the host adds CLI start-up and polling to the processors' own delay.
REREGISTER_SLACK_MS="${REREGISTER_SLACK_MS:-500}"

# A short lease makes a killed processor expire, and heartbeats come, within seconds.
export FLOWPLANE_LEASE_TTL="${COMPOSE_TEST_LEASE_TTL:-3s}"
# Host ports of their own, so a `make up` stack (55xxx) or `make demo` (500xx) can keep running.
export FLOWPLANE_PORT_CONTROL_PLANE="${CI_PORT_CONTROL_PLANE:-57051}"
export FLOWPLANE_PORT_PROCESSOR_1="${CI_PORT_PROCESSOR_1:-57061}"
export FLOWPLANE_PORT_PROCESSOR_2="${CI_PORT_PROCESSOR_2:-57062}"
export FLOWPLANE_PORT_PIPELINE="${CI_PORT_PIPELINE:-57071}"
export FLOWPLANE_PORT_CONNECT="${CI_PORT_CONNECT:-57081}"
export FLOWPLANE_METRICS_PORT_CONTROL_PLANE="${CI_METRICS_PORT_CONTROL_PLANE:-57951}"
export FLOWPLANE_METRICS_PORT_PROCESSOR_1="${CI_METRICS_PORT_PROCESSOR_1:-57961}"
export FLOWPLANE_METRICS_PORT_PROCESSOR_2="${CI_METRICS_PORT_PROCESSOR_2:-57962}"
export FLOWPLANE_METRICS_PORT_PIPELINE="${CI_METRICS_PORT_PIPELINE:-57971}"
unset FLOWPLANE_OTLP_ENDPOINT
# Where the CLI on the host finds the containers: over mutual TLS, with the client
# certificate of deploy/certs (made in step 1), like every link inside the stack.
export FLOWPLANE_PIPELINE="https://127.0.0.1:$FLOWPLANE_PORT_PIPELINE"
export FLOWPLANE_CONTROL_PLANE="https://127.0.0.1:$FLOWPLANE_PORT_CONTROL_PLANE"
export FLOWPLANE_TLS_CA="$CERTS_DIR/ca.pem"
export FLOWPLANE_TLS_CLIENT_CERT="$CERTS_DIR/client.pem"
export FLOWPLANE_TLS_CLIENT_KEY="$CERTS_DIR/client.key"
# ... presenting the client's role token (read, data, register: step 6 applies a standing
# pipeline) from the same `make certs` output.
export FLOWPLANE_CLIENT_TOKEN_FILE="$CERTS_DIR/client.token"

CLI="${FLOWPLANE_CLI:-${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/flowplane}"
PROCESSORS=(processor-1 processor-2)
SERVICES=(control-plane "${PROCESSORS[@]}" pipeline connect)

# --- report: REPORT, record and run_step live in common.sh -----------------------------------

dump_logs() {
    log "last log lines of the stack:"
    compose logs --no-color --tail 30 >&2 2>&1 || true
}

# --- helpers --------------------------------------------------------------------------------

COMPOSE_ARGS=(-p "$PROJECT" -f "$COMPOSE_FILE_PATH" -f "$DEPLOY_DIR/compose-test/compose-test.yml")
compose() { $COMPOSE_TOOL "${COMPOSE_ARGS[@]}" "$@"; }

container_of() { compose ps -q "$1"; }

# Milliseconds in a duration like 3s or 500ms (the forms this script sets).
duration_ms() {
    case "$1" in
        *ms) echo "${1%ms}" ;;
        *s) echo $((${1%s} * 1000)) ;;
        *) echo $(($1 * 1000)) ;;
    esac
}
HEARTBEAT_MS=$(($(duration_ms "$FLOWPLANE_LEASE_TTL") / 3))

cli_has() { [[ -x "$CLI" ]] && "$CLI" "$@" --help >/dev/null 2>&1; }

# Sum of a metric's samples on a published /metrics port (0 when absent or unreachable).
metric_sum() {
    python3 - "$1" "$2" <<'PY'
import sys, urllib.request
port, name = sys.argv[1], sys.argv[2]
total = 0.0
try:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
except OSError:
    text = ""
for line in text.splitlines():
    parts = line.split()
    if len(parts) >= 2 and (parts[0] == name or parts[0].startswith(name + "{")):
        total += float(parts[1])
print(total)
PY
}

# The processor ids the control plane lists now, one a line (empty when it does not answer).
registered_processors() {
    timeout 5 "$CLI" components list --output json 2>/dev/null | python3 -c '
import json, sys
wanted = set(sys.argv[1:])
try:
    data = json.load(sys.stdin)
except ValueError:
    sys.exit(0)
found = set()
def walk(v):
    if isinstance(v, dict):
        for key in ("id", "component_id"):
            if v.get(key) in wanted:
                found.add(v[key])
        for x in v.values():
            walk(x)
    elif isinstance(v, list):
        for x in v:
            walk(x)
walk(data)
print("\n".join(sorted(found)))
' "${PROCESSORS[@]}"
}

# wait_registered TIMEOUT_MS: until the control plane lists both processors.
wait_registered() {
    local deadline=$(($(now_ms) + $1))
    while (($(now_ms) < deadline)); do
        [[ "$(registered_processors | wc -l)" -eq ${#PROCESSORS[@]} ]] && return 0
        sleep 0.05
    done
    return 1
}

# check_text_results OUT_FILE COUNT: the JSON results of a text session are exactly
# LINE-0000001 .. LINE-<COUNT>, sequences 0..COUNT-1, once each, in order, and no error.
check_text_results() {
    python3 - "$1" "$2" <<'PY'
import json, sys
path, count = sys.argv[1], int(sys.argv[2])
results, errors, bad = [], [], []
for n, line in enumerate(open(path), 1):
    try:
        r = json.loads(line)
    except ValueError:
        bad.append(n)
        continue
    if r.get("event") == "summary":
        continue
    (errors if r.get("event") == "error" else results).append(r)
problems = []
if bad:
    problems.append(f"{len(bad)} lines are not JSON (first: line {bad[0]})")
if errors:
    problems.append(f"{len(errors)} errors (first: {errors[0]})")
seqs = [r.get("sequence") for r in results]
if len(seqs) != len(set(seqs)):
    problems.append(f"{len(seqs) - len(set(seqs))} duplicated results")
missing = sorted(set(range(count)) - set(seqs))
if missing:
    problems.append(f"{len(missing)} results missing (first: sequence {missing[0]})")
if seqs != sorted(seqs):
    problems.append("results out of order")
wrong = [r for r in results if r.get("payload", {}).get("value") != f"LINE-{r.get('sequence', -1) + 1:07d}"]
if wrong:
    problems.append(f"{len(wrong)} wrong values (first: {wrong[0]})")
if problems:
    print("; ".join(problems))
    sys.exit(1)
print(f"{count} results, each once, in order, exact")
PY
}

text_input() { awk -v n="$2" 'BEGIN { for (i = 1; i <= n; i++) printf "line-%07d\n", i }' >"$1"; }

# --- steps ----------------------------------------------------------------------------------

step_up() {
    local started image_ms health_ms bytes
    started=$(now_ms)
    bash "$DEPLOY_DIR/scripts/build-images.sh" >&2 || { echo "make images failed"; return 1; }
    image_ms=$(($(now_ms) - started))
    bytes="$(docker image inspect -f '{{.Size}}' "$FLOWPLANE_IMAGE")"
    IMAGE_MB="$(awk -v b="$bytes" 'BEGIN { printf "%.1f MB", b / 1e6 }')"
    if [[ ! -x "$CLI" ]]; then
        (cd "$REPO_ROOT" && "${CARGO:-cargo}" build --release --locked -p flowplane-cli) >&2 ||
            { echo "cannot build the CLI for the host"; return 1; }
    fi
    ensure_certs || { echo "cannot make the dev certificates (deploy/scripts/certs.sh)"; return 1; }
    started=$(now_ms)
    timeout "$HEALTH_TIMEOUT_S" $COMPOSE_TOOL "${COMPOSE_ARGS[@]}" up -d >&2 || { echo "compose up failed"; return 1; }
    local ids=()
    for service in "${SERVICES[@]}"; do ids+=("$(container_of "$service")"); done
    wait_healthy "$HEALTH_TIMEOUT_S" "${ids[@]}" >&2 || { echo "the stack did not become healthy"; return 1; }
    health_ms=$(($(now_ms) - started))
    "$CLI" health "https://127.0.0.1:$FLOWPLANE_PORT_PIPELINE" >/dev/null 2>&1 ||
        { echo "the pipeline is healthy inside its container but not from the host"; return 1; }
    # mTLS is really on: no client certificate fails the handshake, plaintext gets no answer.
    local port
    for port in "$FLOWPLANE_PORT_CONTROL_PLANE" "$FLOWPLANE_PORT_PROCESSOR_1" "$FLOWPLANE_PORT_PROCESSOR_2" \
        "$FLOWPLANE_PORT_PIPELINE" "$FLOWPLANE_PORT_CONNECT"; do
        ! env -u FLOWPLANE_TLS_CLIENT_CERT -u FLOWPLANE_TLS_CLIENT_KEY \
            "$CLI" health --timeout 3 "https://127.0.0.1:$port" >/dev/null 2>&1 ||
            { echo "127.0.0.1:$port answers a client without a certificate"; return 1; }
        ! "$CLI" health --timeout 3 "http://127.0.0.1:$port" >/dev/null 2>&1 ||
            { echo "127.0.0.1:$port answers plaintext"; return 1; }
    done
    # Role tokens are really on: no token, or a token without the role, is refused by name.
    local out
    out="$(env -u FLOWPLANE_CLIENT_TOKEN_FILE "$CLI" components list 2>&1)" &&
        { echo "the control plane lists components for a client without a token"; return 1; }
    grep -qi unauthenticated <<<"$out" ||
        { echo "no token: expected UNAUTHENTICATED, got: $(tail -n 1 <<<"$out")"; return 1; }
    out="$(FLOWPLANE_CLIENT_TOKEN_FILE="$CERTS_DIR/register.token" "$CLI" components list 2>&1)" &&
        { echo "the control plane lists components for a register-only token"; return 1; }
    grep -qi "permission" <<<"$out" && grep -q "read" <<<"$out" ||
        { echo "register token: expected PERMISSION_DENIED naming role read, got: $(tail -n 1 <<<"$out")"; return 1; }
    wait_registered 10000 || { echo "the control plane does not list both processors"; return 1; }
    # The pipeline learns about processors through the control plane: wait until it can plan.
    local deadline=$((SECONDS + 20))
    until "$CLI" validate "$DEPLOY_DIR/compose-test/failover.yaml" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || { echo "the pipeline does not see the processors: $("$CLI" validate "$DEPLOY_DIR/compose-test/failover.yaml" 2>&1 | tail -n 1)"; return 1; }
        sleep 0.1
    done
    echo "image $IMAGE_MB built in $((image_ms / 1000))s; stack healthy over mTLS in $((health_ms / 1000))s; no-cert, plaintext, no-token and wrong-role clients refused"
}

# The example pipelines as `make demo` runs them (examples/run-all.sh with a results directory
# compares every result with examples/expected/), here against the containers.
step_examples() {
    local examples="$REPO_ROOT/examples"
    [[ -f "$examples/run-all.sh" && -f "$examples/make-samples.py" ]] ||
        { echo "waiting for examples/run-all.sh and examples/make-samples.py"; return 2; }
    compgen -G "$examples/expected/*.jsonl" >/dev/null || { echo "waiting for examples/expected/*.jsonl"; return 2; }
    python3 "$examples/make-samples.py" "$WORK/samples" >&2 || { echo "make-samples.py failed"; return 1; }
    if ! timeout "$SESSION_TIMEOUT_S" bash "$examples/run-all.sh" "$CLI" "$WORK/samples" "$WORK/results" >"$WORK/examples.log" 2>&1; then
        tail -n 20 "$WORK/examples.log" >&2
        echo "$(grep -c '^   results differ' "$WORK/examples.log") of $(grep -c '^== ' "$WORK/examples.log") example pipelines differ or failed"
        return 1
    fi
    echo "$(grep -c '^== ' "$WORK/examples.log") example pipelines, $(cat "$WORK"/results/*.jsonl | grep -c '"event":"result"') results, all exactly as expected"
}

step_failover() {
    cli_has run || { echo "waiting for the CLI's run command"; return 2; }
    local input="$WORK/failover.txt" out="$WORK/failover.out" err="$WORK/failover.err"
    text_input "$input" "$FAILOVER_LINES"
    local failovers_before
    failovers_before="$(metric_sum "$FLOWPLANE_METRICS_PORT_PIPELINE" flowplane_pipeline_failovers_total)"
    local started
    started=$(now_ms)
    timeout "$SESSION_TIMEOUT_S" "$CLI" run "$DEPLOY_DIR/compose-test/failover.yaml" \
        --input "text=$input" --output json >"$out" 2>"$err" &
    local cli_pid=$!
    BACKGROUND_PID=$cli_pid

    # Mid-stream: a twentieth of the results are in and the session is still running.
    local deadline=$((SECONDS + SESSION_TIMEOUT_S))
    while (($(wc -l <"$out") < FAILOVER_LINES / 20)); do
        if ! kill -0 "$cli_pid" 2>/dev/null; then
            echo "the session ended before the kill ($(wc -l <"$out") results): $(tail -n 1 "$err")"
            return 1
        fi
        ((SECONDS < deadline)) || { kill "$cli_pid"; echo "no progress: $(wc -l <"$out") results"; return 1; }
        sleep 0.02
    done

    # Kill the replica that holds the session's Process stream(s).
    local victim="" service
    for service in "${PROCESSORS[@]}"; do
        local port_var="FLOWPLANE_METRICS_PORT_${service//[-]/_}"
        port_var="${port_var^^}"
        if awk -v n="$(metric_sum "${!port_var}" flowplane_processor_active_streams)" 'BEGIN { exit !(n > 0) }'; then
            victim="$service"
            break
        fi
    done
    [[ -n "$victim" ]] || { kill "$cli_pid"; echo "no processor reports an active stream (flowplane_processor_active_streams)"; return 1; }
    local at_kill victim_id
    at_kill="$(wc -l <"$out")"
    victim_id="$(container_of "$victim")"
    docker kill "$victim_id" >/dev/null || { kill "$cli_pid"; echo "docker kill $victim failed"; return 1; }
    # The session may end while `docker kill` returns (the failover and the last results take
    # well under a second): whether the kill landed mid-session is the failover counter's to say.
    local ended_at_kill=0
    kill -0 "$cli_pid" 2>/dev/null || ended_at_kill=1

    local rc=0 problem="" verdict=""
    wait "$cli_pid" || rc=$?
    local session_ms=$(($(now_ms) - started))
    ((rc == 0)) || problem="the session failed after killing $victim (exit $rc): $(tail -n 1 "$err")"
    if [[ -z "$problem" ]]; then
        verdict="$(check_text_results "$out" "$FAILOVER_LINES")" || problem="after killing $victim: $verdict"
    fi
    if [[ -z "$problem" ]]; then
        local failovers_after
        failovers_after="$(metric_sum "$FLOWPLANE_METRICS_PORT_PIPELINE" flowplane_pipeline_failovers_total)"
        if ! awk -v a="$failovers_after" -v b="$failovers_before" 'BEGIN { exit !(a > b) }'; then
            problem="the session completed but the pipeline counted no failover"
            ((ended_at_kill)) && problem="the session ended before the kill took effect: raise FAILOVER_LINES"
        fi
    fi

    # Bring the replica back for the next steps, whether or not this one passed.
    docker start "$victim_id" >/dev/null
    if ! wait_healthy "$HEALTH_TIMEOUT_S" "$victim_id" >&2; then
        problem="${problem:-$victim did not come back}"
    elif ! wait_registered 10000; then
        problem="${problem:-$victim did not register again after its restart}"
    fi
    [[ -z "$problem" ]] || { echo "$problem"; return 1; }
    echo "killed $victim at $at_kill/$FAILOVER_LINES results; session done in $((session_ms / 1000))s: $verdict"
}

step_control_plane_restart() {
    cli_has components list || { echo "waiting for the CLI's components list"; return 2; }
    wait_registered 5000 || { echo "precondition: both processors registered"; return 1; }
    docker restart -t 10 "$(container_of control-plane)" >/dev/null || { echo "docker restart failed"; return 1; }
    local deadline=$((SECONDS + HEALTH_TIMEOUT_S))
    until timeout 2 "$CLI" health "https://127.0.0.1:$FLOWPLANE_PORT_CONTROL_PLANE" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || { echo "the control plane did not serve again"; return 1; }
        sleep 0.05
    done
    local up
    up=$(now_ms)
    wait_registered $((10 * HEARTBEAT_MS + 5000)) || { echo "the processors did not register again"; return 1; }
    local took=$(($(now_ms) - up)) limit=$((HEARTBEAT_MS + REREGISTER_SLACK_MS))
    ((took <= limit)) ||
        { echo "re-registered after ${took}ms, more than one heartbeat interval (${HEARTBEAT_MS}ms + ${REREGISTER_SLACK_MS}ms)"; return 1; }

    local session="waiting for the CLI's run command"
    if cli_has run; then
        # The pipeline resyncs its view of the processors on its own; give it a few tries.
        local attempt input="$WORK/after-restart.txt" out="$WORK/after-restart.out"
        text_input "$input" 100
        for attempt in 1 2 3 4 5; do
            if timeout 30 "$CLI" run "$DEPLOY_DIR/compose-test/failover.yaml" --input "text=$input" \
                --output json >"$out" 2>"$WORK/after-restart.err" &&
                check_text_results "$out" 100 >/dev/null; then
                session="a new session works (attempt $attempt)"
                break
            fi
            sleep 1
        done
        [[ "$session" == "a new session works"* ]] ||
            { echo "re-registered in ${took}ms but no new session works: $(tail -n 1 "$WORK/after-restart.err")"; return 1; }
        echo "both processors registered again ${took}ms after the control plane served (limit ${limit}ms); $session"
        return 0
    fi
    echo "re-registered in ${took}ms (limit ${limit}ms); new session: $session"
    return 2
}

seconds() { awk -v ms="$1" 'BEGIN { printf "%.1f", ms / 1000 }'; }

# A standing pipeline as `flowplane pipelines get -o json` shows it, reduced to "STATE NEXT_0
# NEXT_1 ..." (the committed next offset per partition, 0 when none is committed); empty when
# the control plane does not answer or does not know the pipeline.
standing_state() {
    timeout 5 "$CLI" pipelines get "$1" --output json 2>/dev/null | python3 -c '
import json, sys
try:
    p = json.load(sys.stdin)
except ValueError:
    sys.exit(0)
offsets = p.get("offsets") or {}
print(p.get("state", "?"), *(offsets.get(str(n), 0) for n in range(int(sys.argv[1]))))
' "$2"
}

# wait_committed NAME PARTITIONS WANT DEADLINE_S: until every partition's committed offset is at
# least WANT ("+N": until N records are committed in all). Prints the last state either way.
wait_committed() {
    local deadline=$((SECONDS + $4)) state=""
    while ((SECONDS < deadline)); do
        state="$(standing_state "$1" "$2")"
        if [[ -n "$state" ]] && python3 -c '
import sys
want, offsets = sys.argv[1], [int(x) for x in sys.argv[2:]]
sys.exit(0 if (sum(offsets) >= int(want[1:]) if want[0] == "+" else min(offsets) >= int(want)) else 1)
' "$3" ${state#* }; then
            echo "$state"
            return 0
        fi
        sleep 0.2
    done
    echo "${state:-no answer}"
    return 1
}

# check_standing_results FILE PARTITIONS COUNT: the file consumer's JSON lines hold every
# (partition, offset) exactly once, in offset order per partition, each result what
# json.calculator makes of the generator's record there (op [add,sub,mul,div][o % 4],
# a = o % 1000 + 1, b = (p + o) % 9 + 1). Prints "LINES RETRIED" (lines written on a later
# delivery attempt) when they do.
check_standing_results() {
    python3 - "$1" "$2" "$3" <<'PY'
import json, sys
path, partitions, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
last, seen, problems, retried = {}, set(), [], 0
lines = open(path).read().splitlines()
for n, line in enumerate(lines, 1):
    try:
        row = json.loads(line)
        lineage, result = row["lineage"], row["payload"]["result"]
        p, o = int(lineage["partition"]), int(lineage["offset"])
    except (ValueError, KeyError, TypeError) as error:
        problems.append(f"line {n} is not a result ({error!r})")
        continue
    if (p, o) in seen:
        problems.append(f"partition {p} offset {o} twice (line {n})")
    elif o < last.get(p, -1):
        problems.append(f"partition {p} offset {o} after offset {last[p]} (line {n})")
    seen.add((p, o))
    last[p] = max(o, last.get(p, -1))
    a, b = o % 1000 + 1, (p + o) % 9 + 1
    want = [a + b, a - b, a * b, a / b][o % 4]
    if not isinstance(result, (int, float)) or abs(result - want) > 1e-9:
        problems.append(f"partition {p} offset {o}: result {result}, want {want}")
    retried += int(row.get("attempt") or 1) > 1
missing = {(p, o) for p in range(partitions) for o in range(count)} - seen
if missing:
    first = min(missing)
    problems.append(f"{len(missing)} records missing (first: partition {first[0]} offset {first[1]})")
if problems:
    print(f"{len(problems)} problems: " + "; ".join(problems[:3]))
    sys.exit(1)
print(len(lines), retried)
PY
}

# The counters of `pipelines get -o json`, as one phrase for the report.
standing_stats() {
    timeout 5 "$CLI" pipelines get "$1" --output json 2>/dev/null | python3 -c '
import json, sys
s = json.load(sys.stdin)["stats"]
names = ["records_read", "results_delivered", "records_committed", "retries", "dead_lettered"]
print(", ".join(f"{n.replace(chr(95), chr(32))} {s.get(n, 0)}" for n in names))
' || echo "stats unreadable"
}

# A standing pipeline runs on its own: the generator on the connector host feeds json.calculator
# on the processors and the file consumer on the connector host writes the results, while the
# pipeline service claims the pipeline and commits offsets. kill -9 its container mid-stream:
# started again, it claims the pipeline again and goes on from the committed offsets; the file
# consumer drops what is delivered twice, so every record is in the file once and in order.
step_standing() {
    cli_has pipelines apply || { echo "waiting for the CLI's pipelines apply"; return 2; }
    local name=compose-standing partitions=2 count="$STANDING_RECORDS"
    local manifest="$WORK/standing.yaml" out="$WORK/standing.jsonl" state
    cat >"$manifest" <<EOF
kind: StandingPipeline
name: $name
source:
  capability: generator
  params: { count: $count, partitions: $partitions, rate: $STANDING_RATE, payload: json }
nodes:
  - { id: calc, processor: json.calculator }
inputs:
  - { name: records, targets: [{ node: calc }] }
outputs:
  - { name: result, source: { node: calc } }
consumers:
  result:
    capability: file
    params: { path: "/var/lib/flowplane/standing/{output}.jsonl" }
dead_letter: { capability: log }
EOF
    local started
    started=$(now_ms)
    timeout 10 "$CLI" pipelines apply "$manifest" >"$WORK/standing-apply.out" 2>&1 ||
        { echo "pipelines apply failed: $(tail -n 1 "$WORK/standing-apply.out")"; return 1; }

    # Mid-stream: a tenth of the records committed (at the rate, a second or two in).
    state="$(wait_committed "$name" "$partitions" "+$((partitions * count / 10))" 60)" ||
        { echo "not a tenth of the records committed within 60s (state and offsets: $state)"; return 1; }
    local pipeline_id killed at_kill
    pipeline_id="$(container_of pipeline)"
    docker kill -s KILL "$pipeline_id" >/dev/null || { echo "docker kill -s KILL pipeline failed"; return 1; }
    killed=$(now_ms)
    # What the dead runner had committed: what the next one starts from.
    at_kill="$(standing_state "$name" "$partitions")"
    at_kill="${at_kill#* }"
    [[ -n "$at_kill" ]] && ((${at_kill// /+} < partitions * count)) ||
        { echo "every record was committed before the kill (offsets ${at_kill:-unknown}): lower STANDING_RATE"; return 1; }
    docker start "$pipeline_id" >/dev/null || { echo "docker start pipeline failed"; return 1; }
    # Resumed: the new runner (a new runner id) has claimed it, once the dead one's claim expired,
    # and committed past the offsets of the kill.
    state="$(wait_committed "$name" "$partitions" "+$((${at_kill// /+} + 1))" "$STANDING_TIMEOUT_S")" ||
        { echo "no commit past $at_kill within ${STANDING_TIMEOUT_S}s of the kill (state and offsets: $state)"; return 1; }
    local resumed_ms=$(($(now_ms) - killed))

    state="$(wait_committed "$name" "$partitions" "$count" "$STANDING_TIMEOUT_S")" ||
        { echo "not every partition at $count within ${STANDING_TIMEOUT_S}s of the kill (state and offsets: $state)"; return 1; }
    local done_ms=$(($(now_ms) - killed)) total_ms=$(($(now_ms) - started))
    wait_healthy "$HEALTH_TIMEOUT_S" "$pipeline_id" >&2 || { echo "the pipeline is not healthy after its restart"; return 1; }

    # The image has no shell or cat: copy the consumer's file out of the container.
    docker cp "$(container_of connect):/var/lib/flowplane/standing/result.jsonl" "$out" 2>"$WORK/standing-cp.err" ||
        { echo "docker cp of the consumer's output failed: $(tail -n 1 "$WORK/standing-cp.err")"; return 1; }
    local verdict lines retried stats
    verdict="$(check_standing_results "$out" "$partitions" "$count")" ||
        { echo "after the kill at offsets $at_kill: $verdict"; return 1; }
    read -r lines retried <<<"$verdict"
    stats="$(standing_stats "$name")"

    # The store is on the control plane's data volume: a restart keeps the pipeline and its offsets.
    docker restart -t 10 "$(container_of control-plane)" >/dev/null || { echo "docker restart control-plane failed"; return 1; }
    local deadline=$((SECONDS + HEALTH_TIMEOUT_S)) after=""
    until after="$(standing_state "$name" "$partitions")" && [[ -n "$after" ]]; do
        ((SECONDS < deadline)) || { echo "after a control-plane restart, pipelines get $name shows nothing"; return 1; }
        sleep 0.2
    done
    local want
    want="$(yes "$count" | head -n "$partitions" | paste -sd ' ')"
    [[ "${after#* }" == "$want" ]] ||
        { echo "after a control-plane restart the offsets are '${after#* }', want '$want'"; return 1; }
    wait_registered $((10 * HEARTBEAT_MS + 5000)) || { echo "the processors did not register again after the control-plane restart"; return 1; }

    timeout 10 "$CLI" pipelines delete "$name" >"$WORK/standing-delete.out" 2>&1 ||
        { echo "pipelines delete failed: $(tail -n 1 "$WORK/standing-delete.out")"; return 1; }
    [[ -z "$(standing_state "$name" "$partitions")" ]] || { echo "pipelines get still shows $name after delete"; return 1; }
    echo "$lines records ($partitions partitions x $count at $STANDING_RATE/s), each once, in order, right ($retried on a later attempt); runner killed at committed ${at_kill// /+}, committing again $(seconds "$resumed_ms")s and all committed $(seconds "$done_ms")s after the kill ($((total_ms / 1000))s from apply); $stats; pipeline and offsets kept across a control-plane restart; deleted"
}

# Every series the Grafana dashboard queries is exported by some service once traffic has
# flowed, so a renamed metric cannot leave a panel silently empty.
step_dashboard_series() {
    python3 - "$DEPLOY_DIR/grafana/dashboards/flowplane.json" \
        "$FLOWPLANE_METRICS_PORT_CONTROL_PLANE" "$FLOWPLANE_METRICS_PORT_PROCESSOR_1" \
        "$FLOWPLANE_METRICS_PORT_PROCESSOR_2" "$FLOWPLANE_METRICS_PORT_PIPELINE" <<'PY'
import json, re, sys, urllib.request
dash = json.load(open(sys.argv[1]))
wanted = set()
for panel in dash["panels"]:
    for target in panel.get("targets", []):
        wanted.update(re.findall(r"\bflowplane_[a-z0-9_]+", target["expr"]))
exported = set()
for port in sys.argv[2:]:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError as error:
        print(f"/metrics on 127.0.0.1:{port}: {error}")
        sys.exit(1)
    exported.update(re.findall(r"^(flowplane_[a-z0-9_]+)", text, re.M))
missing = sorted(wanted - exported)
if missing:
    print(f"the dashboard queries series no service exports: {', '.join(missing)}")
    sys.exit(1)
print(f"all {len(wanted)} series the dashboard queries are exported")
PY
}

# --- main -----------------------------------------------------------------------------------

if ! docker_engine_up; then
    echo "compose-test: SKIPPED: no Docker engine answers on this machine (docker info failed)"
    exit 0
fi
COMPOSE_TOOL="$(compose_cmd)" || die "a Docker engine runs but neither 'docker compose' nor 'docker-compose' is installed"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/flowplane-compose-test.XXXXXX")"
exec 3>&1
IMAGE_MB="?"
BACKGROUND_PID=""
INTERRUPTED=0
TEST_STARTED=$(now_ms)

finish() {
    local started left
    started=$(now_ms)
    [[ -n "$BACKGROUND_PID" ]] && kill "$BACKGROUND_PID" 2>/dev/null
    compose --profile observability down -v --remove-orphans --timeout 20 >/dev/null 2>&1
    left="$(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT")"
    if [[ -z "$left" ]]; then
        record 7 "stop the stack, nothing left" PASS $(($(now_ms) - started)) "compose down -v; no container of $PROJECT left"
    else
        docker rm -f $left >/dev/null 2>&1
        record 7 "stop the stack, nothing left" FAIL $(($(now_ms) - started)) "containers left after compose down (removed by force): $left"
    fi
    rm -rf "$WORK"
    # fd 3 is the script's own stdout: a signal may land while a step's output is redirected.
    {
        echo
        echo "compose-test report (project $PROJECT, image $FLOWPLANE_IMAGE $IMAGE_MB, $COMPOSE_TOOL, lease ttl $FLOWPLANE_LEASE_TTL, total $(( ($(now_ms) - TEST_STARTED) / 1000 ))s)"
        printf '%s\n' "${REPORT[@]}"
        ((INTERRUPTED)) && echo "interrupted: the steps not listed did not run"
        if ((n_pending > 0)) && [[ "${COMPOSE_TEST_ALLOW_PENDING:-0}" != 1 ]]; then
            echo "$n_pending pending steps count as failed (COMPOSE_TEST_ALLOW_PENDING=1 skips them)"
            echo "compose-test: $n_passed passed, $((n_failed + n_pending)) failed"
        else
            echo "compose-test: $n_passed passed, $n_failed failed, $n_pending skipped"
        fi
    } >&3
    ((INTERRUPTED)) && exit 130
    ((n_failed == 0)) || exit 1
    ((n_pending == 0)) || [[ "${COMPOSE_TEST_ALLOW_PENDING:-0}" == 1 ]] || exit 1
    exit 0
}
trap finish EXIT
trap 'log "interrupted"; INTERRUPTED=1; exit 130' INT TERM

# A stack left by an interrupted run would hold the ports.
compose --profile observability down -v --remove-orphans --timeout 5 >/dev/null 2>&1

# Step 1 gates the rest: without a healthy stack nothing else can be measured.
run_step 1 "images, start, health" step_up || exit 1
run_step 2 "example pipelines, exact outputs" step_examples
run_step 3 "kill a processor mid-stream" step_failover
run_step 4 "restart the control plane" step_control_plane_restart
run_step 5 "dashboard series exported" step_dashboard_series
run_step 6 "standing pipeline: kill -9 the runner" step_standing
exit 0
