#!/usr/bin/env bash
# Builds one container image per Kvorum service, FROM scratch, with no base
# image to pull: the release binary, the shared libraries it links against
# (found with ldd, the dynamic loader included) and the two files glibc's name
# resolution reads. Tags are the workspace version, never `latest`.
#
# Usage: scripts/build-images.sh            (builds the release binaries first)
#        KVORUM_SKIP_CARGO=1 scripts/build-images.sh
set -euo pipefail
cd "$(dirname "$0")/.."

SERVICES=(kvorum-metad kvorum-storage kvorum-router kvorum-detector kvorum-recovery)
VERSION=$(scripts/version.sh)

if ! command -v docker >/dev/null; then
    echo "build-images: docker is not installed" >&2
    exit 1
fi
if [[ -z "${KVORUM_SKIP_CARGO:-}" ]]; then
    cargo build --release --bins
fi

stage=target/images
rm -rf "$stage"
for service in "${SERVICES[@]}"; do
    binary=target/release/$service
    [[ -x "$binary" ]] || { echo "build-images: $binary is missing" >&2; exit 1; }
    context=$stage/$service
    rootfs=$context/rootfs
    mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc" "$rootfs/data" "$rootfs/tmp"
    chmod 1777 "$rootfs/tmp"
    # Line tables are for profiling on the build machine; the image needs none.
    strip --strip-debug -o "$rootfs/usr/local/bin/$service" "$binary"
    # Every library the binary loads, at the path the loader looks for it.
    ldd "$binary" | awk '/=> \// { print $3 } /^\t\/lib/ { print $1 }' | while read -r lib; do
        mkdir -p "$rootfs$(dirname "$lib")"
        cp -L "$lib" "$rootfs$lib"
    done
    # Container runtimes provide /etc/hosts and /etc/resolv.conf; this says to use both.
    printf 'hosts: files dns\n' > "$rootfs/etc/nsswitch.conf"
    printf 'root:x:0:0:root:/:/sbin/nologin\n' > "$rootfs/etc/passwd"
    cat > "$context/Dockerfile" <<EOF
FROM scratch
COPY rootfs/ /
VOLUME /data
ENTRYPOINT ["/usr/local/bin/$service"]
EOF
    if ! output=$(docker build --tag "$service:$VERSION" \
        --label "org.opencontainers.image.version=$VERSION" \
        --label "org.opencontainers.image.title=$service" \
        "$context" 2>&1); then
        echo "$output" >&2
        exit 1
    fi
    echo "built $service:$VERSION ($(docker image inspect --format '{{.Size}}' "$service:$VERSION" | awk '{ printf "%.1f MB", $1 / 1e6 }'))"
done
