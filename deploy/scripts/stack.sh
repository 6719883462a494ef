#!/usr/bin/env bash
# `make up`, `make down` and `make compose-config` for deploy/docker-compose.yml.
#   stack.sh up       make the dev certificates (certs.sh), start the stack (project
#                     $COMPOSE_PROJECT, default flowplane) with mutual TLS and wait until
#                     every flowplane container is healthy; OBSERVABILITY=1 adds the profile
#                     `observability` and points the services' trace export at its collector
#   stack.sh down     stop and remove the stack, its network and volumes, every profile included
#   stack.sh config   validate the compose file (both profiles) and the files it mounts, offline
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PROJECT="${COMPOSE_PROJECT:-flowplane}"
UP_TIMEOUT_S="${UP_TIMEOUT_S:-180}"

compose_tool="$(compose_cmd)" || die "neither 'docker compose' nor 'docker-compose' is installed"
compose() { $compose_tool -p "$PROJECT" -f "$COMPOSE_FILE_PATH" "$@"; }

up() {
    docker_engine_up || die "no Docker engine answers (docker info failed)"
    ensure_certs || die "cannot make the dev certificates in $CERTS_DIR (deploy/scripts/certs.sh)"
    local profile=()
    if [[ "${OBSERVABILITY:-0}" == 1 ]]; then
        profile=(--profile observability)
        export FLOWPLANE_OTLP_ENDPOINT="${FLOWPLANE_OTLP_ENDPOINT:-http://otel-collector:4317}"
    fi
    timeout "$UP_TIMEOUT_S" $compose_tool -p "$PROJECT" -f "$COMPOSE_FILE_PATH" "${profile[@]}" up -d ||
        die "compose up failed; see: $compose_tool -p $PROJECT logs"
    # shellcheck disable=SC2046
    wait_healthy "$UP_TIMEOUT_S" $(compose ps -q control-plane processor-1 processor-2 pipeline) ||
        die "the stack is not healthy; see: $compose_tool -p $PROJECT logs"
    local c="${CERTS_DIR#"$REPO_ROOT"/}"
    cat <<EOF
flowplane is up with mutual TLS (project $PROJECT, image $FLOWPLANE_IMAGE); a client presents a
certificate from $c, e.g.:
  export FLOWPLANE_TLS_CA=$c/ca.pem FLOWPLANE_TLS_CLIENT_CERT=$c/client.pem FLOWPLANE_TLS_CLIENT_KEY=$c/client.key
  pipeline       https://127.0.0.1:${FLOWPLANE_PORT_PIPELINE:-55071}   flowplane run PIPELINE.yaml --pipeline https://127.0.0.1:${FLOWPLANE_PORT_PIPELINE:-55071} --input NAME=FILE
  control plane  https://127.0.0.1:${FLOWPLANE_PORT_CONTROL_PLANE:-55051}   flowplane components list --control-plane https://127.0.0.1:${FLOWPLANE_PORT_CONTROL_PLANE:-55051}
  processors     https://127.0.0.1:${FLOWPLANE_PORT_PROCESSOR_1:-55061}, https://127.0.0.1:${FLOWPLANE_PORT_PROCESSOR_2:-55062}
EOF
    if ((${#profile[@]})); then
        cat <<EOF
  grafana        http://127.0.0.1:${FLOWPLANE_PORT_GRAFANA:-53000}  (dashboard "flowplane")
  jaeger         http://127.0.0.1:${FLOWPLANE_PORT_JAEGER:-56686}
  prometheus     http://127.0.0.1:${FLOWPLANE_PORT_PROMETHEUS:-59090}
  otlp (host)    http://127.0.0.1:${FLOWPLANE_PORT_OTLP:-54317}
EOF
    fi
    echo "stop it with: make down"
}

down() {
    docker_engine_up || die "no Docker engine answers (docker info failed)"
    compose --profile observability down -v --remove-orphans --timeout 30
}

config() {
    # Compose validates the file without an engine and without pulling anything.
    compose config -q
    compose --profile observability config -q
    local file
    for file in otel-collector.yaml prometheus.yml \
        grafana/provisioning/datasources/flowplane.yaml \
        grafana/provisioning/dashboards/flowplane.yaml \
        grafana/dashboards/flowplane.json; do
        [[ -f "$DEPLOY_DIR/$file" ]] || die "deploy/$file is mounted by the compose file but missing"
    done
    python3 - "$DEPLOY_DIR" <<'PY'
import json, sys
root = sys.argv[1]
dash = json.load(open(f"{root}/grafana/dashboards/flowplane.json"))
exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
assert exprs, "the dashboard has no queries"
for p in dash["panels"]:
    assert p["datasource"]["uid"] == "prometheus", f"panel {p['title']!r} uses another datasource"
needed = ["flowplane_pipeline_sessions_active", "flowplane_pipeline_node_chunks_total",
          "flowplane_pipeline_node_latency_seconds_bucket", "flowplane_pipeline_node_errors_total",
          "flowplane_controlplane_components", "flowplane_grpc_server_requests_total"]
missing = [m for m in needed if not any(m in e for e in exprs)]
assert not missing, f"the dashboard never queries {missing}"
PY
    # promtool, where installed (Debian's `prometheus` package), checks the scrape config.
    if command -v promtool >/dev/null 2>&1; then
        promtool check config "$DEPLOY_DIR/prometheus.yml" >/dev/null
    fi
    log "compose config valid ($compose_tool; profiles: default, observability); mounted files present; dashboard queries the required series"
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    config) config ;;
    *) die "usage: stack.sh up|down|config" ;;
esac
