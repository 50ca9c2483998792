#!/usr/bin/env bash
# Installs what chaos runs (and the chaos tests in make test) need from Debian:
# nftables for network faults, libfaketime for clock faults.
set -euo pipefail

missing=()
command -v nft >/dev/null || missing+=(nftables)
[[ -f /usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1 ]] || missing+=(libfaketime faketime)
if (( ${#missing[@]} )); then
    echo "chaos: installing ${missing[*]}" >&2
    sudo=""; [[ $(id -u) -eq 0 ]] || sudo=sudo
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
