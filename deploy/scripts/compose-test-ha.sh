#!/usr/bin/env bash
# `make compose-test`, second part: the compose profile `ha` under faults, for real.
#   1 build the image, start the profile (project flowplane-ci-ha: 3 etcd members, 2 control-plane
#     replicas on them, 2 processors, 2 pipelines) with mutual TLS and role tokens, wait for health;
#     both replicas list both processors HEALTHY
#   2 a session through each pipeline, exact results
#   3 `docker network disconnect` control-plane-1 (first in every client's list) from the project
#     network: the processors cannot reach it, the processors heartbeat through control-plane-2 (its heartbeat
#     counter moves), which keeps listing them HEALTHY under the same registration (registered_at
#     unchanged: nothing registered again), and a new session works through each pipeline
#   4 reconnect it: the processors reach it again and it lists the same registrations
#   5 kill the etcd leader (found with `etcdctl endpoint status`): a new leader is elected,
#     registrations survive on both replicas, heartbeats go on, sessions work on both pipelines
#   6 stop the stack (always, from a trap) and check that no container is left
# Skips (exit 0) only when no Docker engine answers. Every wait is bounded; each step reports its time.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PROJECT="${COMPOSE_TEST_HA_PROJECT:-flowplane-ci-ha}"
HEALTH_TIMEOUT_S="${HEALTH_TIMEOUT_S:-120}"
SESSION_LINES="${HA_SESSION_LINES:-2000}"

# With etcd the lease is whole seconds, at least 2 s; 3 s makes heartbeats come every second.
export FLOWPLANE_LEASE_TTL="${COMPOSE_TEST_HA_LEASE_TTL:-3s}"
# Host ports of their own (58xxx): the default compose test (57xxx), `make up` (55xxx) and
# `make demo` (500xx) can run beside it.
export FLOWPLANE_PORT_HA_CONTROL_PLANE_1="${CI_HA_PORT_CONTROL_PLANE_1:-58051}"
export FLOWPLANE_PORT_HA_CONTROL_PLANE_2="${CI_HA_PORT_CONTROL_PLANE_2:-58052}"
export FLOWPLANE_PORT_HA_PIPELINE_1="${CI_HA_PORT_PIPELINE_1:-58071}"
export FLOWPLANE_PORT_HA_PIPELINE_2="${CI_HA_PORT_PIPELINE_2:-58072}"
export FLOWPLANE_METRICS_PORT_HA_CONTROL_PLANE_1="${CI_HA_METRICS_PORT_CONTROL_PLANE_1:-58951}"
export FLOWPLANE_METRICS_PORT_HA_CONTROL_PLANE_2="${CI_HA_METRICS_PORT_CONTROL_PLANE_2:-58952}"
unset FLOWPLANE_OTLP_ENDPOINT FLOWPLANE_PIPELINE FLOWPLANE_CONTROL_PLANE
# The CLI on the host: mutual TLS with the client certificate and token of deploy/certs.
export FLOWPLANE_TLS_CA="$CERTS_DIR/ca.pem"
export FLOWPLANE_TLS_CLIENT_CERT="$CERTS_DIR/client.pem"
export FLOWPLANE_TLS_CLIENT_KEY="$CERTS_DIR/client.key"
export FLOWPLANE_CLIENT_TOKEN_FILE="$CERTS_DIR/client.token"

CLI="${FLOWPLANE_CLI:-${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/flowplane}"
CP1="https://127.0.0.1:$FLOWPLANE_PORT_HA_CONTROL_PLANE_1"
CP2="https://127.0.0.1:$FLOWPLANE_PORT_HA_CONTROL_PLANE_2"
PIPELINES=("https://127.0.0.1:$FLOWPLANE_PORT_HA_PIPELINE_1" "https://127.0.0.1:$FLOWPLANE_PORT_HA_PIPELINE_2")
PROCESSORS=(ha-processor-1 ha-processor-2)
ETCD=(etcd-1 etcd-2 etcd-3)
SERVICES=("${ETCD[@]}" control-plane-1 control-plane-2 "${PROCESSORS[@]}" pipeline-1 pipeline-2)
MANIFEST="$DEPLOY_DIR/compose-test/failover.yaml"

# --- report: REPORT, record and run_step live in common.sh; a failed step shows this ----------

# Every log line of the stack goes to this file when a step fails (the stack is removed after).
LOGS_FILE="${COMPOSE_TEST_HA_LOGS:-${CARGO_TARGET_DIR:-$REPO_ROOT/target}/compose-test-ha.log}"

dump_logs() {
    mkdir -p "$(dirname "$LOGS_FILE")"
    compose logs --no-color --timestamps >"$LOGS_FILE" 2>&1 || true
    log "the stack's logs are in $LOGS_FILE; the last lines:"
    compose logs --no-color --tail 20 >&2 2>&1 || true
}

# --- helpers --------------------------------------------------------------------------------

COMPOSE_ARGS=(-p "$PROJECT" -f "$COMPOSE_FILE_PATH" -f "$DEPLOY_DIR/compose-test/compose-test-ha.yml" --profile ha)
compose() { $COMPOSE_TOOL "${COMPOSE_ARGS[@]}" "$@"; }
container_of() { compose ps -q "$1"; }

# processors_on URL: "ID STATUS REGISTERED_AT LAST_HEARTBEAT" per ha processor the replica at URL
# lists, sorted by id (nothing when it does not answer).
processors_on() {
    timeout 5 "$CLI" components list --control-plane "$1" --kind processor --output json 2>>"$WORK/cli-errors" |
        python3 -c '
import json, sys
wanted = set(sys.argv[1:])
try:
    data = json.load(sys.stdin)
except ValueError:
    sys.exit(0)
for c in sorted(data, key=lambda c: c["id"]):
    if c["id"] in wanted:
        print(c["id"], str(c["status"]).upper(), c["registered_at"], c["last_heartbeat"])
' "${PROCESSORS[@]}"
}

# all_healthy_on URL: the replica lists every ha processor HEALTHY.
all_healthy_on() {
    local lines
    lines="$(processors_on "$1")"
    [[ "$(grep -c ' HEALTHY ' <<<"$lines")" -eq ${#PROCESSORS[@]} ]]
}

# registrations_on URL: "ID REGISTERED_AT;" per processor on one line (a failed step's report
# shows its last line only), what must not change across a fault.
registrations_on() { processors_on "$1" | awk '{ printf "%s %s;", $1, $3 }'; }

# last_cli_error: the CLI's last complaint (a listing that printed nothing), on one line.
last_cli_error() { tail -n 2 "$WORK/cli-errors" 2>/dev/null | cut -c1-300 | tr '\n' ' '; }

# why_registered_again: the processors' own account of registering again (their warnings), on
# one line, for a step whose registrations changed.
why_registered_again() {
    compose logs --no-color "${PROCESSORS[@]}" 2>/dev/null |
        grep -E 'registering again|heartbeat failed' | tail -n 4 | cut -c1-400 | tr '\n' ' '
}

# heartbeats_after URL EPOCH_MS: every processor's last heartbeat, as the replica lists it, is
# later than EPOCH_MS.
heartbeats_after() {
    processors_on "$1" | python3 -c '
import sys
from datetime import datetime
after, want = int(sys.argv[1]) / 1000, int(sys.argv[2])
seen = 0
for line in sys.stdin:
    _id, _status, _registered, beat = line.split()
    if datetime.fromisoformat(beat.replace("Z", "+00:00")).timestamp() > after:
        seen += 1
sys.exit(0 if seen == want else 1)
' "$2" "${#PROCESSORS[@]}"
}

# reachable_from SERVICE URL: a gRPC health check of URL from inside SERVICE's container, with
# its own certificate (the image's CLI; the environment has its TLS settings).
reachable_from() {
    timeout 5 docker exec "$(container_of "$1")" flowplane health --timeout 2 "$2" >/dev/null 2>&1
}

# wait_for TIMEOUT_MS COMMAND...: until COMMAND succeeds, polling every 100 ms.
wait_for() {
    local deadline=$(($(now_ms) + $1))
    shift
    until "$@"; do
        (($(now_ms) < deadline)) || return 1
        sleep 0.1
    done
}

metric_sum() { # PORT NAME: the sum of a metric's samples on a published /metrics port (0 when absent)
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
print(int(total))
PY
}
heartbeats_on() { metric_sum "$1" flowplane_controlplane_heartbeats_total; }
heartbeats_grew() { (($(heartbeats_on "$1") > $2)); } # PORT COUNT: the replica counted more than COUNT

# session PIPELINE_URL NAME: a text session of SESSION_LINES lines, every result once, in order.
session() {
    local input="$WORK/$2.txt" out="$WORK/$2.out" err="$WORK/$2.err"
    awk -v n="$SESSION_LINES" 'BEGIN { for (i = 1; i <= n; i++) printf "line-%07d\n", i }' >"$input"
    timeout 60 "$CLI" run "$MANIFEST" --pipeline "$1" --input "text=$input" --output json >"$out" 2>"$err" ||
        { echo "session $2 through $1 failed: $(tail -n 1 "$err")"; return 1; }
    python3 - "$out" "$SESSION_LINES" <<'PY' || return 1
import json, sys
path, count = sys.argv[1], int(sys.argv[2])
rows = [r for r in map(json.loads, open(path)) if r.get("event") != "summary"]
errors = [r for r in rows if r.get("event") == "error"]
seqs = [r.get("sequence") for r in rows if "error" not in r]
wrong = [r for r in rows if r.get("event") != "error" and r["payload"].get("value") != f"LINE-{r['sequence'] + 1:07d}"]
if errors or seqs != list(range(count)) or wrong:
    print(f"{len(errors)} errors, {len(seqs)} results of {count}, in order: {seqs == sorted(seqs)}, {len(wrong)} wrong values")
    sys.exit(1)
PY
}

# sessions_work TAG: a session through each pipeline. The pipelines' views follow the registry
# on their own after a fault; a few tries, each bounded.
sessions_work() {
    local index attempt ok
    for index in "${!PIPELINES[@]}"; do
        ok=0
        for attempt in 1 2 3; do
            if session "${PIPELINES[$index]}" "$1-pipeline-$((index + 1))" >"$WORK/session.why"; then
                ok=1
                break
            fi
            sleep 1
        done
        ((ok)) || { tail -n 1 "$WORK/session.why"; return 1; }
    done
}

# etcd_status: "ENDPOINT MEMBER_ID LEADER_ID" per running member that answers, each asked on its
# own (a dead endpoint fails the whole command), from inside a running member (the image has
# etcdctl; the etcd network is internal).
etcd_status() {
    local member id running=() via=""
    for member in "${ETCD[@]}"; do
        id="$(container_of "$member")"
        [[ "$(docker inspect -f '{{.State.Running}}' "$id" 2>/dev/null)" == true ]] || continue
        running+=("$member")
        [[ -n "$via" ]] || via="$id"
    done
    [[ -n "$via" ]] || return 1
    for member in "${running[@]}"; do
        timeout 10 docker exec "$via" etcdctl --command-timeout=3s --endpoints="http://$member:2379" \
            endpoint status -w json 2>/dev/null | python3 -c '
import json, sys
try:
    rows = json.load(sys.stdin)
except ValueError:
    sys.exit(0)
for s in rows:
    print(s["Endpoint"], s["Status"]["header"]["member_id"], s["Status"]["leader"])
'
    done
}

# The member whose id is the leader's, as a service name (etcd-N), empty when there is none.
etcd_leader() {
    etcd_status | awk '$2 == $3 { sub("http://", "", $1); sub(":2379", "", $1); print $1; exit }'
}

# --- steps ----------------------------------------------------------------------------------

step_up() {
    local started image_ms health_ms
    started=$(now_ms)
    bash "$DEPLOY_DIR/scripts/build-images.sh" >&2 || { echo "make images failed"; return 1; }
    image_ms=$(($(now_ms) - started))
    docker run --rm "$FLOWPLANE_IMAGE" etcd --version >"$WORK/etcd-version" 2>&1 ||
        { echo "the image has no etcd: $(head -n 1 "$WORK/etcd-version")"; return 1; }
    [[ -x "$CLI" ]] || (cd "$REPO_ROOT" && "${CARGO:-cargo}" build --release --locked -p flowplane-cli) >&2 ||
        { echo "cannot build the CLI for the host"; return 1; }
    ensure_certs || { echo "cannot make the dev certificates (deploy/scripts/certs.sh)"; return 1; }
    started=$(now_ms)
    timeout "$HEALTH_TIMEOUT_S" $COMPOSE_TOOL "${COMPOSE_ARGS[@]}" up -d "${SERVICES[@]}" >&2 ||
        { echo "compose up failed"; return 1; }
    local ids=() service
    for service in "${SERVICES[@]}"; do ids+=("$(container_of "$service")"); done
    wait_healthy "$HEALTH_TIMEOUT_S" "${ids[@]}" >&2 || { echo "the ha stack did not become healthy"; return 1; }
    health_ms=$(($(now_ms) - started))
    # Only the profile runs: the default stack's services were not started beside it.
    [[ -z "$(container_of control-plane)" ]] || { echo "the default stack's control plane started with the profile"; return 1; }
    local members leader
    members="$(etcd_status | wc -l)"
    leader="$(etcd_leader)"
    ((members == 3)) && [[ -n "$leader" ]] || { echo "etcd: $members members answer, leader '${leader}'"; return 1; }
    wait_for 15000 all_healthy_on "$CP1" || { echo "control-plane-1 does not list both processors HEALTHY: $(processors_on "$CP1" | tr '\n' ';')"; return 1; }
    wait_for 5000 all_healthy_on "$CP2" || { echo "control-plane-2 does not list both processors HEALTHY: $(processors_on "$CP2" | tr '\n' ';')"; return 1; }
    [[ "$(registrations_on "$CP1")" == "$(registrations_on "$CP2")" ]] ||
        { echo "the replicas list different registrations"; return 1; }
    # A plaintext client or one without a certificate is refused, on the new names' ports too.
    local url
    for url in "$CP1" "$CP2" "${PIPELINES[@]}"; do
        ! env -u FLOWPLANE_TLS_CLIENT_CERT -u FLOWPLANE_TLS_CLIENT_KEY "$CLI" health --timeout 3 "$url" >/dev/null 2>&1 ||
            { echo "$url answers a client without a certificate"; return 1; }
    done
    echo "image with $(head -n 1 "$WORK/etcd-version") built in $((image_ms / 1000))s; 9 containers healthy in $((health_ms / 1000))s; etcd leader $leader; both replicas list both processors HEALTHY"
}

step_sessions() {
    local started
    started=$(now_ms)
    # The pipelines learn the processors through the registry watch; the first try may be early.
    sessions_work initial || return 1
    echo "a $SESSION_LINES-line session through each pipeline in $(($(now_ms) - started))ms, every result once, in order"
}

NETWORK=""
step_partition() {
    local cp1 before beats_before at took unhealthy=0
    cp1="$(container_of control-plane-1)"
    NETWORK="$(docker inspect -f '{{range $name, $_ := .NetworkSettings.Networks}}{{println $name}}{{end}}' "$cp1" | grep '_default$')"
    [[ -n "$NETWORK" ]] || { echo "control-plane-1 is on no *_default network"; return 1; }
    before="$(registrations_on "$CP2")"
    [[ "$(tr -cd ';' <<<"$before" | wc -c)" -eq ${#PROCESSORS[@]} ]] || { echo "precondition: control-plane-2 lists both processors"; return 1; }
    # Every client lists control-plane-1 first: control-plane-2 takes no heartbeats yet.
    local beats_cp1
    beats_cp1="$(heartbeats_on "$FLOWPLANE_METRICS_PORT_HA_CONTROL_PLANE_1")"
    beats_before="$(heartbeats_on "$FLOWPLANE_METRICS_PORT_HA_CONTROL_PLANE_2")"
    ((beats_cp1 > 0)) || { echo "precondition: the processors heartbeat through control-plane-1 (it counted $beats_cp1)"; return 1; }

    local started
    started=$(now_ms)
    docker network disconnect "$NETWORK" "$cp1" || { echo "docker network disconnect failed"; return 1; }
    # From here on control-plane-1 takes no heartbeat: one it took while the disconnect was under
    # way carries an earlier time, so a later one came through control-plane-2.
    at=$(now_ms)
    # Partitioned from its clients: a processor no longer reaches it by name. (The host still can:
    # Docker keeps the published port forwarding to the container, which stays on the etcd network.)
    ! reachable_from ha-processor-1 https://control-plane-1:50051 ||
        { echo "ha-processor-1 still reaches control-plane-1 after the disconnect"; return 1; }
    # The heartbeats move: control-plane-2 takes them and sees a heartbeat of each processor
    # after the disconnect.
    wait_for 15000 heartbeats_after "$CP2" "$at" ||
        { echo "no heartbeat after the disconnect: $(processors_on "$CP2" | tr '\n' ';')"; return 1; }
    wait_for 5000 heartbeats_grew "$FLOWPLANE_METRICS_PORT_HA_CONTROL_PLANE_2" "$beats_before" ||
        { echo "control-plane-2 counted no heartbeats ($beats_before before, $(heartbeats_on "$FLOWPLANE_METRICS_PORT_HA_CONTROL_PLANE_2") after)"; return 1; }
    took=$(($(now_ms) - started))
    local beats_after
    beats_after="$(heartbeats_on "$FLOWPLANE_METRICS_PORT_HA_CONTROL_PLANE_2")"
    # Watched over two lease TTLs: HEALTHY throughout, and nothing registered again.
    local deadline=$(($(now_ms) + 2 * $(duration_ms "$FLOWPLANE_LEASE_TTL"))) lines
    while (($(now_ms) < deadline)); do
        lines="$(processors_on "$CP2")"
        [[ "$(grep -c ' HEALTHY ' <<<"$lines")" -eq ${#PROCESSORS[@]} ]] || unhealthy=$((unhealthy + 1))
        sleep 0.2
    done
    all_healthy_on "$CP2" || { echo "control-plane-2 does not list both processors HEALTHY: $(processors_on "$CP2" | tr '\n' ';')"; return 1; }
    ((unhealthy == 0)) || { echo "a processor was not HEALTHY on control-plane-2 in $unhealthy polls after the move"; return 1; }
    [[ "$(registrations_on "$CP2")" == "$before" ]] ||
        { echo "the processors registered again: before '$before', now '$(registrations_on "$CP2")'; their logs: $(why_registered_again)"; return 1; }
    sessions_work partition || return 1
    echo "first heartbeat of both processors through control-plane-2 ${took}ms after the disconnect ($((beats_after - beats_before)) heartbeats there); HEALTHY over 2 TTLs, same registrations; a session works through each pipeline"
}

step_reconnect() {
    local cp1 at
    cp1="$(container_of control-plane-1)"
    at=$(now_ms)
    # The alias is the compose service name the clients and the certificate use.
    docker network connect --alias control-plane-1 "$NETWORK" "$cp1" || { echo "docker network connect failed"; return 1; }
    wait_for 30000 reachable_from ha-processor-1 https://control-plane-1:50051 ||
        { echo "ha-processor-1 does not reach control-plane-1 after the reconnect"; return 1; }
    wait_for 10000 all_healthy_on "$CP1" || { echo "control-plane-1 does not list both processors HEALTHY: $(processors_on "$CP1" | tr '\n' ';')"; return 1; }
    [[ "$(registrations_on "$CP1")" == "$(registrations_on "$CP2")" ]] ||
        { echo "the replicas list different registrations after the reconnect"; return 1; }
    echo "control-plane-1 reachable from the processors $(($(now_ms) - at))ms after the reconnect; lists the same registrations as control-plane-2"
}

step_etcd_leader() {
    local leader before at new_leader took
    leader="$(etcd_leader)"
    [[ -n "$leader" ]] || { echo "no etcd leader: $(etcd_status | tr '\n' ';')"; return 1; }
    before="$(registrations_on "$CP2")"
    [[ "$(tr -cd ';' <<<"$before" | wc -c)" -eq ${#PROCESSORS[@]} ]] || { echo "precondition: both processors registered"; return 1; }
    at=$(now_ms)
    docker kill "$(container_of "$leader")" >/dev/null || { echo "docker kill $leader failed"; return 1; }
    local deadline=$(($(now_ms) + 20000))
    new_leader=""
    while (($(now_ms) < deadline)); do
        new_leader="$(etcd_leader)"
        [[ -n "$new_leader" && "$new_leader" != "$leader" ]] && break
        new_leader=""
        sleep 0.2
    done
    [[ -n "$new_leader" ]] || { echo "no new etcd leader within 20s of killing $leader: $(etcd_status | tr '\n' ';')"; return 1; }
    local elected=$(($(now_ms) - at))
    # Heartbeats go on after the election: both replicas see one of each processor after it.
    local after_election
    after_election=$(now_ms)
    wait_for 20000 heartbeats_after "$CP1" "$after_election" ||
        { echo "no heartbeat after the election on control-plane-1: $(processors_on "$CP1" | tr '\n' ';')"; return 1; }
    took=$(($(now_ms) - at))
    local cp
    for cp in "$CP1" "$CP2"; do
        wait_for 10000 all_healthy_on "$cp" || { echo "$cp does not list both processors HEALTHY: $(processors_on "$cp" | tr '\n' ';')"; return 1; }
        [[ "$(registrations_on "$cp")" == "$before" ]] ||
            { echo "registrations changed on $cp: before '$before', now '$(registrations_on "$cp")'; the CLI's last error: $(last_cli_error); the processors' logs: $(why_registered_again)"; return 1; }
    done
    sessions_work leader || return 1
    echo "killed leader $leader: $new_leader elected (seen ${elected}ms after), heartbeats on both replicas ${took}ms after the kill, same registrations, a session works through each pipeline"
}

# Milliseconds in a duration like 3s or 500ms.
duration_ms() {
    case "$1" in
        *ms) echo "${1%ms}" ;;
        *s) echo $((${1%s} * 1000)) ;;
        *) echo $(($1 * 1000)) ;;
    esac
}

# --- main -----------------------------------------------------------------------------------

if ! docker_engine_up; then
    echo "compose-test-ha: SKIPPED: no Docker engine answers on this machine (docker info failed)"
    exit 0
fi
COMPOSE_TOOL="$(compose_cmd)" || die "a Docker engine runs but neither 'docker compose' nor 'docker-compose' is installed"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/flowplane-compose-test-ha.XXXXXX")"
exec 3>&1
INTERRUPTED=0
TEST_STARTED=$(now_ms)

finish() {
    local started left
    started=$(now_ms)
    compose down -v --remove-orphans --timeout 10 >/dev/null 2>&1
    left="$(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT")"
    if [[ -z "$left" ]]; then
        record 6 "stop the stack, nothing left" PASS $(($(now_ms) - started)) "compose down -v; no container of $PROJECT left"
    else
        docker rm -f $left >/dev/null 2>&1
        record 6 "stop the stack, nothing left" FAIL $(($(now_ms) - started)) "containers left after compose down (removed by force): $left"
    fi
    rm -rf "$WORK"
    {
        echo
        echo "compose-test-ha report (project $PROJECT, profile ha, image $FLOWPLANE_IMAGE, $COMPOSE_TOOL, lease ttl $FLOWPLANE_LEASE_TTL, total $(( ($(now_ms) - TEST_STARTED) / 1000 ))s)"
        printf '%s\n' "${REPORT[@]}"
        ((INTERRUPTED)) && echo "interrupted: the steps not listed did not run"
        echo "compose-test-ha: $n_passed passed, $n_failed failed"
    } >&3
    ((INTERRUPTED)) && exit 130
    ((n_failed == 0)) || exit 1
    exit 0
}
trap finish EXIT
trap 'log "interrupted"; INTERRUPTED=1; exit 130' INT TERM

# A stack left by an interrupted run would hold the ports.
compose down -v --remove-orphans --timeout 5 >/dev/null 2>&1

# Each step needs the one before it: a fault is only meaningful on a working stack.
run_step 1 "images, start ha profile, health" step_up || exit 1
run_step 2 "a session through each pipeline" step_sessions || exit 1
run_step 3 "partition control-plane-1" step_partition || exit 1
run_step 4 "reconnect control-plane-1" step_reconnect || exit 1
run_step 5 "kill the etcd leader" step_etcd_leader || exit 1
exit 0
