#!/usr/bin/env bash
# A chaos run against the Compose cluster: build the images, start
# deploy/docker-compose.yml under a project of its own (router and storage
# nodes published on free ports), run kvorum-chaos with the docker backend
# (kills, SIGTERM, pauses, network partitions, the metadata leader, the recovery
# controller), and tear everything down, volumes too, even on failure. The
# report goes to target/chaos/docker/.
set -euo pipefail
cd "$(dirname "$0")/.."

name=chaos-docker
source scripts/compose-lib.sh

if [[ -z "${KVORUM_SKIP_IMAGES:-}" ]]; then
    scripts/build-images.sh
fi
cargo build --release --bin kvorum-chaos
chaos=target/release/kvorum-chaos

export KVORUM_PARTITIONS=${KVORUM_PARTITIONS:-16}
override=$(mktemp --suffix=.yml)
# The storage nodes' internal API on fixed free host ports (a random one would
# change when a killed container starts again), for the convergence check.
map=()
{
    echo 'version: "3.9"'
    echo 'services:'
    for i in 1 2 3 4 5; do
        p=$(free_port)
        printf '  storage-%s:\n    ports: ["127.0.0.1:%s:7001"]\n' "$i" "$p"
        map+=("storage-$i:7001=127.0.0.1:$p")
    done
} >"$override"
project="kvorum-chaos-$$"
compose_start "$project" "$override"

address_map=$(IFS=,; echo "${map[*]}")

"$chaos" --backend docker --router "$router" \
    --compose-project "$project" --compose-files "deploy/docker-compose.yml,$override" \
    --address-map "$address_map" \
    --duration-s "${CHAOS_DURATION_S:-90}" --rate 40 --fault-interval-s 8 --fault-hold-s 3 \
    --faults kill-storage,partition-storage,kill-metad-leader,kill-two-storage,pause-storage,term-storage,kill-storage-and-metad-leader,kill-recovery \
    --out "${CHAOS_OUT:-target/chaos/docker}"
log "PASSED: see ${CHAOS_OUT:-target/chaos/docker}/report.html"
