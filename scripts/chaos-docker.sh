#!/usr/bin/env bash
# A chaos run against the Compose cluster: build the images, start
# deploy/docker-compose.yml under a project of its own (router and storage
# nodes published on free ports), run kvorum-chaos with the docker backend
# (kills, SIGTERM, pauses, network partitions, the metadata leader, the recovery
# controller), and tear everything down, volumes too, even on failure. The
# report goes to target/chaos/docker/.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'chaos-docker: %s\n' "$*" >&2; }
fail() { log "FAILED: $*"; exit 1; }

if [[ -z "${KVORUM_SKIP_IMAGES:-}" ]]; then
    scripts/build-images.sh
fi
chaos=target/release/kvorum-chaos
cargo build --release --bin kvorum-chaos

project="kvorum-chaos-$$"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export KVORUM_ROUTER_PORT=$port KVORUM_VERSION=$(scripts/version.sh) KVORUM_PARTITIONS=${KVORUM_PARTITIONS:-16}
override=$(mktemp --suffix=.yml)
# The storage nodes' internal API on fixed free host ports (a random one would
# change when a killed container starts again), for the convergence check.
map=()
{
    echo 'version: "3.9"'
    echo 'services:'
    for i in 1 2 3 4 5; do
        p=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
        printf '  storage-%s:\n    ports: ["127.0.0.1:%s:7001"]\n' "$i" "$p"
        map+=("storage-$i:7001=127.0.0.1:$p")
    done
} >"$override"
compose=(docker-compose --project-name "$project" --file deploy/docker-compose.yml --file "$override")
router="http://127.0.0.1:$port"

cleanup() {
    status=$?
    if [[ $status -ne 0 ]]; then
        log "logs of the cluster:"
        "${compose[@]}" logs --no-color --tail 30 >&2 || true
    fi
    "${compose[@]}" down --volumes --remove-orphans --timeout 5 >/dev/null 2>&1 || true
    rm -f "$override"
    exit $status
}
trap cleanup EXIT INT TERM

log "starting $project (router on $router)"
"${compose[@]}" up --detach --quiet-pull 2>&1 | grep -v -e '^Creating' -e '^$' >&2 || true
deadline=$((SECONDS + 120))
until curl -sf "$router/readyz" >/dev/null; do
    (( SECONDS < deadline )) || fail "the router was not ready within 120 s"
    sleep 0.5
done
log "ready after ${SECONDS}s"

address_map=$(IFS=,; echo "${map[*]}")

"$chaos" --backend docker --router "$router" \
    --compose-project "$project" --compose-files "deploy/docker-compose.yml,$override" \
    --address-map "$address_map" \
    --duration-s "${CHAOS_DURATION_S:-90}" --rate 40 --fault-interval-s 8 --fault-hold-s 3 \
    --faults kill-storage,partition-storage,kill-metad-leader,pause-storage,term-storage,kill-recovery \
    --out "${CHAOS_OUT:-target/chaos/docker}"
log "PASSED: see ${CHAOS_OUT:-target/chaos/docker}/report.html"
