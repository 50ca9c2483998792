#!/usr/bin/env bash
# A chaos run against the Compose cluster: build the images, start
# deploy/docker-compose.yml under a project of its own (router and storage
# nodes published on free ports), run kvorum-chaos with the docker backend
# (every fault kind Docker can do: kills, SIGTERM, pauses, disk wipes with
# `metad replace`, partitions and lossy or slow links made inside the
# containers' own network namespaces, clock steps and drift under libfaketime,
# a paused router of two), and tear everything down, volumes too, even on
# failure. The report goes to target/chaos/docker/.
set -euo pipefail
cd "$(dirname "$0")/.."

name=chaos-docker
source scripts/compose-lib.sh

if [[ -z "${KVORUM_SKIP_IMAGES:-}" ]]; then
    scripts/build-images.sh
fi
cargo build --release --bin kvorum-chaos
chaos=target/release/kvorum-chaos

scripts/ensure-chaos-tools.sh
libfaketime=/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1

export KVORUM_PARTITIONS=${KVORUM_PARTITIONS:-16}
override=$(mktemp --suffix=.yml)
# Every service but the storage nodes runs under libfaketime, reading its
# wall-clock offset from a file of its own in this directory (the tool steps
# and drifts them); the storage nodes' clocks are not what is tested.
clocks=$(mktemp -d)
faked=(metad-1 metad-2 metad-3 router router-2 detector recovery)
for service in "${faked[@]}"; do echo "+0.000" >"$clocks/$service"; done
router2_port=$(free_port)
# The storage nodes' internal API on fixed free host ports (a random one would
# change when a killed container starts again), for the convergence check.
# The Compose lines that put a service under libfaketime with its own clock file.
faketime() {
    cat <<YAML
    volumes:
      - "$libfaketime:/faketime/libfaketimeMT.so.1:ro"
      - "$clocks:/clocks:ro"
    environment:
      LD_PRELOAD: /faketime/libfaketimeMT.so.1
      FAKETIME_TIMESTAMP_FILE: /clocks/$1
      FAKETIME_DONT_FAKE_MONOTONIC: "1"
      FAKETIME_CACHE_DURATION: "1"
      OTEL_RESOURCE_ATTRIBUTES: service.instance.id=$1
YAML
}
map=()
{
    echo 'version: "3.9"'
    echo 'services:'
    for i in 1 2 3 4 5; do
        p=$(free_port)
        printf '  storage-%s:\n    ports: ["127.0.0.1:%s:7001"]\n' "$i" "$p"
        map+=("storage-$i:7001=127.0.0.1:$p")
    done
    # A second router, so that one can be paused mid-write while clients use the other.
    cat <<YAML
  router-2:
    image: kvorum-router:$(scripts/version.sh)
    restart: unless-stopped
    hostname: router-2
    command: ["--listen=0.0.0.0:8080", "--metad=metad-1:9001,metad-2:9001,metad-3:9001"]
    ports: ["127.0.0.1:$router2_port:8080"]
    depends_on: [metad-1, metad-2, metad-3, storage-1, storage-2, storage-3, storage-4, storage-5]
YAML
    faketime router-2
    for service in "${faked[@]}"; do
        [[ $service == router-2 ]] && continue
        printf '  %s:\n' "$service"
        faketime "$service"
    done
} >"$override"
project="kvorum-chaos-$$"
compose_dirs=("$clocks")
compose_start "$project" "$override"
router2="http://127.0.0.1:$router2_port"
deadline=$((SECONDS + 60))
until curl -sf "$router2/readyz" >/dev/null; do
    (( SECONDS < deadline )) || fail "router-2 was not ready within 60 s"
    sleep 0.5
done

address_map=$(IFS=,; echo "${map[*]}")

# Every fault kind Docker can do: all but churn-storage (a node added by the
# tool would need a service the Compose files lack).
"$chaos" --backend docker --router "$router,$router2" \
    --compose-project "$project" --compose-files "deploy/docker-compose.yml,$override" \
    --address-map "$address_map" --clock-dir "$clocks" --libfaketime "$libfaketime" \
    --duration-s "${CHAOS_DURATION_S:-180}" --rate 40 --fault-interval-s 8 --fault-hold-s 3 \
    --faults kill-storage,partition-halves,wipe-storage,clock-forward,kill-two-storage,slow-links,kill-metad-leader,partition-one-way,pause-router,wipe-metad,clock-back,partition-bridge,pause-storage,wipe-storage-all,lossy-links,kill-storage-and-metad-leader,clock-drift,term-storage,partition-storage,kill-recovery,kill-metad \
    --out "${CHAOS_OUT:-target/chaos/docker}"
log "PASSED: see ${CHAOS_OUT:-target/chaos/docker}/report.html"
