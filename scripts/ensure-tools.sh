#!/usr/bin/env bash
# Makes sure the tools `make run` and `make test` need are present, installing what can be installed.
set -euo pipefail

if ! command -v cargo >/dev/null 2>&1; then
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
        echo "cargo is in $HOME/.cargo/bin but not on PATH: run 'source \$HOME/.cargo/env' and retry" >&2
    elif command -v rustup >/dev/null 2>&1; then
        rustup toolchain install stable --profile minimal --component rustfmt,clippy
    elif command -v curl >/dev/null 2>&1; then
        echo "installing the Rust toolchain with rustup (https://rustup.rs)" >&2
        curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs \
            | sh -s -- -y --profile minimal --component rustfmt,clippy \
            || echo "rustup could not be installed; install Rust 1.90+ from https://rustup.rs and retry" >&2
        # shellcheck disable=SC1091
        [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
    else
        echo "Kvorum needs a Rust toolchain (1.90 or newer): install it from https://rustup.rs and retry" >&2
    fi
    command -v cargo >/dev/null 2>&1 || exit 1
fi

if ! cargo nextest --version >/dev/null 2>&1; then
    echo "installing cargo-nextest (test runner) from crates.io" >&2
    cargo install cargo-nextest --locked
fi

for component in rustfmt clippy; do
    if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
        if command -v rustup >/dev/null 2>&1; then
            rustup component add "$component"
        else
            echo "cargo $component is missing and rustup is not available to add it" >&2
            exit 1
        fi
    fi
done
