#!/usr/bin/env bash
# A chaos run against the kind or minikube deployment (make kind-deploy or
# make minikube-deploy first): port-forward the router and every storage pod,
# then run kvorum-chaos with the k8s backend, which deletes pods as a user's
# chaos test does (KVORUM_CHAOS_FORCE_DELETE=true adds --grace-period=0 --force)
# and waits for Kubernetes to bring them back. The report goes to target/chaos/k8s/.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'chaos-k8s: %s\n' "$*" >&2; }
namespace=${KVORUM_NAMESPACE:-kvorum}
storage_nodes=${KVORUM_STORAGE_NODES:-5}
kubectl get namespace "$namespace" >/dev/null || { log "no namespace $namespace: deploy first (make kind-deploy)"; exit 1; }

chaos=target/release/kvorum-chaos
cargo build --release --bin kvorum-chaos

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
forwards=()
cleanup() {
    for pid in "${forwards[@]}"; do
        pkill -P "$pid" 2>/dev/null || true
        kill "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT INT TERM
# A port-forward ends when its pod is deleted: keep starting it again, so the
# pod that Kubernetes recreates under the same name is reachable again.
forward() {
    while true; do
        kubectl --namespace "$namespace" port-forward "$1" "$2" >/dev/null 2>&1 || true
        sleep 1
    done &
    forwards+=($!)
}

router_port=$(free_port)
forward svc/kvorum-router "$router_port:8080"
map=()
for ((i = 0; i < storage_nodes; i++)); do
    p=$(free_port)
    forward "pod/kvorum-storage-$i" "$p:7001"
    map+=("kvorum-storage-$i.kvorum-storage:7001=127.0.0.1:$p")
done
router="http://127.0.0.1:$router_port"
deadline=$((SECONDS + 30))
until curl -sf "$router/readyz" >/dev/null; do
    (( SECONDS < deadline )) || { log "the router is not reachable through the port-forward"; exit 1; }
    sleep 0.5
done

"$chaos" --backend k8s --router "$router" --namespace "$namespace" \
    --storage-nodes "$storage_nodes" --address-map "$(IFS=,; echo "${map[*]}")" \
    --duration-s "${CHAOS_DURATION_S:-150}" --fault-interval-s 15 --fault-hold-s 1 \
    --faults kill-storage,kill-metad-leader,kill-storage,kill-recovery \
    --out "${CHAOS_OUT:-target/chaos/k8s}"
