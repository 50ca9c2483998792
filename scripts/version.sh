#!/usr/bin/env bash
# Prints the workspace version (the image tag), read from the root Cargo.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
sed -n '/^\[workspace.package\]/,/^\[/ s/^version *= *"\(.*\)"/\1/p' Cargo.toml
