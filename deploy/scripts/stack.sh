#!/usr/bin/env bash
# `make up`, `make down` and `make compose-config` for deploy/docker-compose.yml.
#   stack.sh up       make the dev certificates (certs.sh), start the stack (project
#                     $COMPOSE_PROJECT, default flowplane) with mutual TLS and wait until
#                     every flowplane container is healthy; OBSERVABILITY=1 adds the profile
#                     `observability` and points the services' trace export at its collector;
#                     HA=1 starts the profile `ha` instead of the default stack (3 etcd
#                     members, 2 control-plane replicas, 2 processors, 2 pipelines)
#                     The image is built (build-images.sh) only when $FLOWPLANE_IMAGE is
#                     missing; `make images` rebuilds it.
#   stack.sh down     stop and remove the stack, its network and volumes, every profile included
#   stack.sh ps       the stack's containers with their state and health, every profile included
#   stack.sh logs     the stack's logs (SERVICE... to pick; FOLLOW=1 follows, TAIL=N limits)
#   stack.sh config   validate the compose file (every profile) and the files it mounts, offline
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PROJECT="${COMPOSE_PROJECT:-flowplane}"
UP_TIMEOUT_S="${UP_TIMEOUT_S:-180}"

compose_tool="$(compose_cmd)" || die "neither 'docker compose' nor 'docker-compose' is installed"
compose() { $compose_tool -p "$PROJECT" -f "$COMPOSE_FILE_PATH" "$@"; }

# The profile's services, named on `up` so that the default stack does not start beside them
# (services without a profile always start otherwise).
HA_SERVICES=(etcd-1 etcd-2 etcd-3 control-plane-1 control-plane-2 ha-processor-1 ha-processor-2 pipeline-1 pipeline-2)

# The observability profile's third-party images, as the compose file pins them.
observability_images() {
    compose --profile observability config 2>/dev/null |
        awk '/^ *image:/ { print $2 }' | grep -v -x -F "$FLOWPLANE_IMAGE" | sort -u
}

# Every image of the observability profile is here or can be pulled; otherwise stop before
# starting anything, naming what is missing and what to do instead.
check_observability_images() {
    local image missing=() images
    images="$(observability_images)"
    [[ -n "$images" ]] || die "cannot list the observability profile's images (compose config failed): $(compose --profile observability config -q 2>&1 | head -n 3)"
    while read -r image; do
        [[ -n "$image" ]] || continue
        docker image inspect "$image" >/dev/null 2>&1 && continue
        timeout 10 docker manifest inspect "$image" >/dev/null 2>&1 && continue
        missing+=("$image")
    done <<<"$images"
    ((${#missing[@]} == 0)) && return 0
    die "OBSERVABILITY=1 needs images that are neither here nor pullable from this machine: ${missing[*]}.
  Load them (docker load) or pull them where a registry answers; or start without the profile
  and send the traces to your own collector: FLOWPLANE_OTLP_ENDPOINT=http://HOST:4317 make up"
}

# The image the stack runs: reused when present (`make images` rebuilds it), built otherwise.
ensure_image() {
    local built
    if built="$(docker image inspect -f '{{.Created}} {{index .Config.Labels "org.opencontainers.image.revision"}}' "$FLOWPLANE_IMAGE" 2>/dev/null)"; then
        log "reusing image $FLOWPLANE_IMAGE (created ${built% *}, revision ${built##* }); make images rebuilds it"
        return 0
    fi
    log "image $FLOWPLANE_IMAGE is missing: building it (make images)"
    bash "$(dirname "${BASH_SOURCE[0]}")/build-images.sh"
}

up() {
    docker_engine_up || die "no Docker engine answers (docker info failed)"
    ensure_certs || die "cannot make the dev certificates in $CERTS_DIR (deploy/scripts/certs.sh)"
    local profile=()
    if [[ "${OBSERVABILITY:-0}" == 1 ]]; then
        check_observability_images
        profile=(--profile observability)
        export FLOWPLANE_OTLP_ENDPOINT="${FLOWPLANE_OTLP_ENDPOINT:-http://otel-collector:4317}"
    fi
    ensure_image
    if [[ "${HA:-0}" == 1 ]]; then
        up_ha "${profile[@]}"
        return
    fi
    timeout "$UP_TIMEOUT_S" $compose_tool -p "$PROJECT" -f "$COMPOSE_FILE_PATH" "${profile[@]}" up -d ||
        die "compose up failed; see: make logs (and make ps)"
    # shellcheck disable=SC2046
    wait_healthy "$UP_TIMEOUT_S" $(compose ps -q control-plane processor-1 processor-2 pipeline connect) ||
        die "the stack is not healthy; see: make ps, make logs"
    local c="${CERTS_DIR#"$REPO_ROOT"/}"
    cat <<EOF
flowplane is up with mutual TLS (project $PROJECT, image $FLOWPLANE_IMAGE); a client presents a
certificate from $c, e.g.:
  export FLOWPLANE_TLS_CA=$c/ca.pem FLOWPLANE_TLS_CLIENT_CERT=$c/client.pem FLOWPLANE_TLS_CLIENT_KEY=$c/client.key FLOWPLANE_CLIENT_TOKEN_FILE=$c/client.token
  pipeline       https://127.0.0.1:${FLOWPLANE_PORT_PIPELINE:-55071}   flowplane run PIPELINE.yaml --pipeline https://127.0.0.1:${FLOWPLANE_PORT_PIPELINE:-55071} --input NAME=FILE
  control plane  https://127.0.0.1:${FLOWPLANE_PORT_CONTROL_PLANE:-55051}   flowplane components list --control-plane https://127.0.0.1:${FLOWPLANE_PORT_CONTROL_PLANE:-55051}
  processors     https://127.0.0.1:${FLOWPLANE_PORT_PROCESSOR_1:-55061}, https://127.0.0.1:${FLOWPLANE_PORT_PROCESSOR_2:-55062}
  connector host https://127.0.0.1:${FLOWPLANE_PORT_CONNECT:-55081}   standing pipelines: flowplane pipelines apply MANIFEST.yaml --control-plane https://127.0.0.1:${FLOWPLANE_PORT_CONTROL_PLANE:-55051}
                 (file consumer paths under /var/lib/flowplane/standing; docker cp them out)
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

up_ha() {
    local services=("${HA_SERVICES[@]}")
    # With OBSERVABILITY=1 the profile's own services come too (the caller passed the profile).
    (($#)) && services+=(otel-collector jaeger prometheus grafana)
    timeout "$UP_TIMEOUT_S" $compose_tool -p "$PROJECT" -f "$COMPOSE_FILE_PATH" --profile ha "$@" up -d "${services[@]}" ||
        die "compose up failed; see: make logs (and make ps)"
    # shellcheck disable=SC2046
    wait_healthy "$UP_TIMEOUT_S" $(compose --profile ha ps -q "${HA_SERVICES[@]}") ||
        die "the ha stack is not healthy; see: make ps, make logs"
    local c="${CERTS_DIR#"$REPO_ROOT"/}"
    cat <<EOF
flowplane (profile ha) is up with mutual TLS (project $PROJECT, image $FLOWPLANE_IMAGE): etcd-1..3,
two control-plane replicas on them, two processors and two pipelines. A client presents a
certificate from $c, e.g.:
  export FLOWPLANE_TLS_CA=$c/ca.pem FLOWPLANE_TLS_CLIENT_CERT=$c/client.pem FLOWPLANE_TLS_CLIENT_KEY=$c/client.key FLOWPLANE_CLIENT_TOKEN_FILE=$c/client.token
  control plane  flowplane components list --control-plane https://127.0.0.1:${FLOWPLANE_PORT_HA_CONTROL_PLANE_1:-55151},https://127.0.0.1:${FLOWPLANE_PORT_HA_CONTROL_PLANE_2:-55152}
  pipelines      flowplane run PIPELINE.yaml --pipeline https://127.0.0.1:${FLOWPLANE_PORT_HA_PIPELINE_1:-55171} (or :${FLOWPLANE_PORT_HA_PIPELINE_2:-55172}) --input NAME=FILE
  etcd           docker exec \$(docker ps -q -f label=com.docker.compose.project=$PROJECT -f label=com.docker.compose.service=etcd-1) etcdctl endpoint status --cluster -w table
stop it with: make down
EOF
}

down() {
    docker_engine_up || die "no Docker engine answers (docker info failed)"
    compose --profile observability --profile ha down -v --remove-orphans --timeout 30
}

stack_ps() {
    docker_engine_up || die "no Docker engine answers (docker info failed)"
    compose --profile observability --profile ha ps
}

stack_logs() {
    docker_engine_up || die "no Docker engine answers (docker info failed)"
    local args=(--no-color)
    [[ "${FOLLOW:-0}" == 1 ]] && args+=(--follow)
    [[ -n "${TAIL:-}" ]] && args+=(--tail "$TAIL")
    compose --profile observability --profile ha logs "${args[@]}" "$@"
}

config() {
    # Compose validates the file without an engine and without pulling anything.
    compose config -q
    compose --profile observability config -q
    compose --profile ha config -q
    # The ha profile is complete: every service stack.sh and compose-test-ha.sh name exists.
    local listed service
    listed="$(compose --profile ha config --services)"
    for service in "${HA_SERVICES[@]}"; do
        grep -qx "$service" <<<"$listed" || die "profile ha: service $service is missing from the compose file"
    done
    $compose_tool -p "$PROJECT" -f "$COMPOSE_FILE_PATH" -f "$DEPLOY_DIR/compose-test/compose-test-ha.yml" --profile ha config -q
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
    log "compose config valid ($compose_tool; profiles: default, observability, ha); mounted files present; dashboard queries the required series"
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    ps) stack_ps ;;
    logs) shift; stack_logs "$@" ;;
    config) config ;;
    *) die "usage: stack.sh up|down|ps|logs [SERVICE...]|config" ;;
esac
