#!/usr/bin/env bash
# make bench: install what the benchmark needs (etcd 3.4 server and client, wrk,
# perf for profiles) from Debian, build the release binaries, run scripts/bench.py.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v etcd >/dev/null || missing+=(etcd-server)
command -v etcdctl >/dev/null || missing+=(etcd-client)
command -v wrk >/dev/null || missing+=(wrk)
if [[ "${1:-}" == --profile ]] && ! command -v perf >/dev/null; then missing+=(linux-perf); fi
if (( ${#missing[@]} )); then
    echo "bench: installing ${missing[*]}" >&2
    sudo=""; [[ $(id -u) -eq 0 ]] || sudo=sudo
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
cargo build --release --bins
# BENCH_SCRIPT picks another measurement that shares these tools (make bench-tombstones).
exec python3 "scripts/${BENCH_SCRIPT:-bench.py}" "$@"
