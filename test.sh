#!/usr/bin/env bash
# The one test command. On a fresh machine it first installs what the tests need:
#   - Node.js + npm (Debian packages, when run as root and missing),
#   - the js-libp2p test peer (npm ci in interop/js; brings its own Node 22 from npm),
#   - the rust-libp2p test peer (cargo build --release in interop/rust-libp2p-peer),
# then runs the workspace's tests (unit, property, end-to-end and interop).
set -euo pipefail
cd "$(dirname "$0")"

step() { printf '\n==> %s\n' "$*"; }

if ! command -v npm >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        step "installing nodejs and npm (Debian packages)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
    else
        echo "npm is missing: install Node.js and npm (e.g. apt-get install nodejs npm), then rerun" >&2
        exit 1
    fi
fi

step "js-libp2p test peer: npm ci in interop/js"
(cd interop/js && npm ci --no-audit --no-fund --loglevel=error)

step "rust-libp2p test peer: cargo build --release (a few minutes when cold)"
cargo build --release --locked --manifest-path interop/rust-libp2p-peer/Cargo.toml

step "cargo test --workspace"
# CI=true makes the interop tests fail (not skip) when a peer is missing.
export CI="${CI:-true}"
cargo test --workspace --locked
