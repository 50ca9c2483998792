#!/usr/bin/env bash
# The Compose cluster end to end: build the images, start deploy/docker-compose.yml
# under a project name of its own with the router on a free port, PUT and GET
# through the router container, kill a storage container holding the key, check
# that QUORUM still succeeds and that the detector marks the node down, and
# tear everything down (volumes too), even on failure.
set -euo pipefail
cd "$(dirname "$0")/.."

name=test-docker
source scripts/compose-lib.sh

if [[ -z "${KVORUM_SKIP_IMAGES:-}" ]]; then
    scripts/build-images.sh
fi
compose_start "kvorum-test-$$"

put() { curl -s -o /dev/null -D - -w '%{http_code}' -X PUT "$router/v1/kv/$1" --data-binary "$2"; }
get() { curl -s "$router/v1/kv/$1"; }
header() { grep -i "^$1:" | tr -d '\r' | awk '{ print $2 }'; }

answer=$(put docker-key first)
[[ "${answer: -3}" == 204 ]] || fail "PUT answered ${answer: -3}"
[[ "$(get docker-key)" == first ]] || fail "GET did not return the value written"
replicas=$(header x-kvorum-replicas-asked <<<"$answer")
victim=${replicas%%,*}
log "docker-key lives on storage nodes $replicas; killing storage-$victim"
"${compose[@]}" kill storage-"$victim" >/dev/null 2>&1

answer=$(put docker-key second)
[[ "${answer: -3}" == 204 ]] || fail "QUORUM PUT with storage-$victim down answered ${answer: -3}"
acked=$(header x-kvorum-replicas-acked <<<"$answer")
[[ ",$acked," != *",$victim,"* ]] || fail "the killed node $victim acknowledged ($acked)"
[[ "$(get docker-key)" == second ]] || fail "QUORUM GET with storage-$victim down did not return the new value"
status=$(curl -s -o /dev/null -w '%{http_code}' "$router/v1/kv/docker-key?consistency=all")
[[ $status == 503 ]] || fail "ALL with a node down answered $status, not 503"

# The failure detector container sees it too, and metad records it.
node_state() {
    curl -s "$router/v1/cluster" | python3 -c "import json, sys; print(next(n['state'] for n in json.load(sys.stdin)['nodes'] if n['id'] == $victim))"
}
deadline=$((SECONDS + 20))
until [[ "$(node_state)" == down ]]; do
    (( SECONDS < deadline )) || fail "storage-$victim was not marked down within 20 s"
    sleep 0.5
done
log "PASSED: QUORUM PUT and GET carry on with storage-$victim down (acked by $acked); ALL says 503; the detector marked it down"
