#!/usr/bin/env bash
# Builds the release binaries and lays out the runtime root filesystem of the flowplane
# image in OUT_DIR: the stripped binaries, exactly the shared libraries `ldd` reports for
# them (the dynamic loader included), /etc/passwd with the non-root user, nsswitch.conf,
# the static etcd and etcdctl for the compose profile `ha` (from FLOWPLANE_IMAGE_ETCD_DIR)
# with /var/lib/etcd, the data directory its named volumes mount, and /var/lib/flowplane with
# data/ (the control plane's standing-pipeline store) and standing/ (the connector host's file
# consumer output), which compose mounts named volumes on. /var/lib is owned by the non-root
# user through `COPY --chown` in the Dockerfiles: a new volume takes the owner of the directory
# it is mounted on, and a mount point missing from the image would be made root's.
# Both image paths run this same script: deploy/Dockerfile in its builder stage, and
# build-images.sh on this machine, so the two images have the same layout.
#
# usage: assemble-rootfs.sh OUT_DIR [--no-build]
# env:   CARGO (default cargo), CARGO_TARGET_DIR (default REPO/target),
#        FLOWPLANE_IMAGE_BINARIES (default: all five; a subset is for development only),
#        FLOWPLANE_IMAGE_ETCD_DIR (required: a directory holding static etcd and etcdctl binaries)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

out="${1:?usage: assemble-rootfs.sh OUT_DIR [--no-build]}"
build=1
[[ "${2:-}" == "--no-build" ]] && build=0

# The uid/gid distroless calls `nonroot`; any fixed non-zero id would do.
readonly RUNTIME_UID=65532
read -ra binaries <<<"${FLOWPLANE_IMAGE_BINARIES:-flowplane-control-plane flowplane-processor flowplane-pipeline flowplane-connect flowplane}"
target_dir="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"

package_of() {
    case "$1" in
        flowplane) echo flowplane-cli ;;
        *) echo "$1" ;;
    esac
}

etcd_dir="${FLOWPLANE_IMAGE_ETCD_DIR:?FLOWPLANE_IMAGE_ETCD_DIR must name the directory holding etcd and etcdctl}"
for bin in etcd etcdctl; do
    [[ -x "$etcd_dir/$bin" ]] || die "$etcd_dir/$bin is missing or not executable (FLOWPLANE_IMAGE_ETCD_DIR)"
    # The image has no loader for anything but the flowplane binaries' libraries.
    if ldd "$etcd_dir/$bin" >/dev/null 2>&1; then die "$etcd_dir/$bin is dynamically linked; the image needs a static etcd"; fi
done

if ((build)); then
    packages=()
    for bin in "${binaries[@]}"; do packages+=(-p "$(package_of "$bin")"); done
    log "cargo build --release --locked --bins ${packages[*]}"
    (cd "$REPO_ROOT" && "${CARGO:-cargo}" build --release --locked --bins "${packages[@]}")
fi

for bin in "${binaries[@]}"; do
    [[ -x "$target_dir/release/$bin" ]] || die "binary $target_dir/release/$bin is missing (package $(package_of "$bin"))"
done

rm -rf "$out"
mkdir -p "$out/usr/local/bin" "$out/etc" "$out/tmp" "$out/var/lib/etcd" \
    "$out/var/lib/flowplane/data" "$out/var/lib/flowplane/standing"
chmod 1777 "$out/tmp"

declare -A libs=()
for bin in "${binaries[@]}"; do
    src="$target_dir/release/$bin"
    strip --strip-all -o "$out/usr/local/bin/$bin" "$src"
    chmod 0755 "$out/usr/local/bin/$bin"
    # ldd prints "name => /path (addr)" for libraries and "/path (addr)" for the loader;
    # linux-vdso has no file. A static binary makes ldd fail: it then needs nothing.
    ldd_out="$(ldd "$src" 2>&1)" || { log "$bin: no shared libraries ($ldd_out)"; continue; }
    while read -r first second third _; do
        if [[ "$second" == "=>" ]]; then
            [[ "$third" == "not" ]] && die "$bin: shared library $first not found"
            libs["$third"]=1
        elif [[ "$first" == /* ]]; then
            libs["$first"]=1
        fi
    done <<<"$ldd_out"
done

for lib in "${!libs[@]}"; do
    mkdir -p "$out$(dirname "$lib")"
    # -L: the image gets the file, not the host's symlink chain.
    cp -L "$lib" "$out$lib"
done

for bin in etcd etcdctl; do
    cp -L "$etcd_dir/$bin" "$out/usr/local/bin/$bin"
    chmod 0755 "$out/usr/local/bin/$bin"
done
etcd_version="$("$out/usr/local/bin/etcd" --version 2>/dev/null | sed -n 's/^etcd Version: //p')"
[[ -n "$etcd_version" ]] || die "$etcd_dir/etcd does not run here (etcd --version printed no version)"

cat >"$out/etc/passwd" <<EOF
root:x:0:0:root:/root:/sbin/nologin
nonroot:x:$RUNTIME_UID:$RUNTIME_UID:flowplane:/nonexistent:/sbin/nologin
EOF
cat >"$out/etc/group" <<EOF
root:x:0:
nonroot:x:$RUNTIME_UID:
EOF
# glibc resolves names with its built-in files and dns modules (no libnss_* needed since
# 2.34); Docker provides /etc/hosts and /etc/resolv.conf at run time.
echo "hosts: files dns" >"$out/etc/nsswitch.conf"

log "rootfs in $out: ${binaries[*]} + ${#libs[@]} shared libraries (${!libs[*]}) + etcd $etcd_version (static, with etcdctl)"
