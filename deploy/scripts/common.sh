# shellcheck shell=bash disable=SC2034
# Shared helpers for the deploy scripts: which compose tool this machine has, and logging.
# Sourced, never run; it must not start, stop or build anything by itself.

FLOWPLANE_IMAGE="${FLOWPLANE_IMAGE:-flowplane:local}"
DEPLOY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REPO_ROOT="$(cd "$DEPLOY_DIR/.." && pwd)"
COMPOSE_FILE_PATH="$DEPLOY_DIR/docker-compose.yml"
# Where the compose file mounts the mTLS certificates from (deploy/scripts/certs.sh).
CERTS_DIR="$DEPLOY_DIR/certs"

log() { printf '%s %s\n' "[$(date +%H:%M:%S)]" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Milliseconds since the epoch, for step timings.
now_ms() { date +%s%3N; }

# The compose CLI: the v2 plugin (`docker compose`) where installed, else the standalone
# v1 `docker-compose` (Debian's package). Both read the same file.
compose_cmd() {
    if docker compose version >/dev/null 2>&1; then
        echo "docker compose"
    elif command -v docker-compose >/dev/null 2>&1; then
        echo "docker-compose"
    else
        return 1
    fi
}

# True when a Docker engine answers (not just a client binary).
docker_engine_up() {
    command -v docker >/dev/null 2>&1 && timeout 10 docker info >/dev/null 2>&1
}

# Health of one container as Docker sees it: healthy, unhealthy, starting, or the state
# (exited, ...) of a container without a health check or that is not running.
container_health() {
    docker inspect -f '{{if and .State.Running .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$1" 2>/dev/null || echo missing
}

# wait_healthy TIMEOUT_S CONTAINER_ID...: until every container is healthy. Fails at once when
# one has exited, and at the deadline otherwise, naming the container and its state.
wait_healthy() {
    local timeout_s="$1"
    shift
    local deadline=$((SECONDS + timeout_s)) id state pending
    while :; do
        pending=()
        for id in "$@"; do
            state="$(container_health "$id")"
            case "$state" in
                healthy) ;;
                exited | dead | missing)
                    log "container $(container_name "$id") is $state"
                    return 1
                    ;;
                *) pending+=("$(container_name "$id")=$state") ;;
            esac
        done
        ((${#pending[@]} == 0)) && return 0
        if ((SECONDS >= deadline)); then
            log "not healthy after ${timeout_s}s: ${pending[*]}"
            return 1
        fi
        sleep 0.5
    done
}

container_name() { docker inspect -f '{{.Name}}' "$1" 2>/dev/null | sed 's|^/||' || echo "$1"; }

# ensure_certs: the dev CA and certificates the compose stack mounts (certs.sh keeps the CA,
# remakes the leaves), and FLOWPLANE_CERTS_GID, the group the containers need to read the keys.
ensure_certs() {
    CERTS_DIR="$CERTS_DIR" bash "$DEPLOY_DIR/scripts/certs.sh" >&2 || return 1
    FLOWPLANE_CERTS_GID="$(stat -c %g "$CERTS_DIR/pipeline.key")" || return 1
    export FLOWPLANE_CERTS_GID
}

# --- step report shared by the compose tests (compose-test.sh, compose-test-ha.sh) ----------
# A script sources this, sets WORK, and defines dump_logs (what to show when a step fails).

declare -a REPORT=()
n_passed=0 n_failed=0 n_pending=0

# record NUMBER TITLE STATUS MS DETAIL
record() {
    local seconds
    seconds="$(awk -v ms="$4" 'BEGIN { printf "%.1fs", ms / 1000 }')"
    REPORT+=("$(printf '  %s %-38s %-8s %7s  %s' "$1" "$2" "$3" "$seconds" "$5")")
    case "$3" in
        PASS) n_passed=$((n_passed + 1)) ;;
        PENDING) n_pending=$((n_pending + 1)) ;;
        *) n_failed=$((n_failed + 1)) ;;
    esac
    log "step $1 $2: $3 ($seconds) $5"
}

# run_step NUMBER TITLE FUNCTION: the function prints its detail as the last line of stdout
# and returns 0 (PASS), 2 (PENDING) or anything else (FAIL).
run_step() {
    local number="$1" title="$2" fn="$3" started rc detail
    log "step $number: $title"
    started=$(now_ms)
    # Not in a subshell: a step may set globals for the report (IMAGE_MB).
    "$fn" >"$WORK/step-$number.out"
    rc=$?
    detail="$(tail -n 1 "$WORK/step-$number.out")"
    case $rc in
        0) record "$number" "$title" PASS $(($(now_ms) - started)) "$detail" ;;
        2) record "$number" "$title" PENDING $(($(now_ms) - started)) "$detail" ;;
        *)
            record "$number" "$title" FAIL $(($(now_ms) - started)) "$detail"
            dump_logs
            ;;
    esac
    return "$rc"
}
