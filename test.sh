#!/usr/bin/env bash
# The one test command. On a fresh machine it first installs what the tests need:
#   - Debian packages when run as root and missing: nodejs, npm, chromium, iproute2, nftables,
#   - the js-libp2p test peer (npm ci in interop/js; brings its own Node 22 from npm),
#   - the js-libp2p 0.42 peer that speaks only circuit relay v1 (npm ci in interop/js-v1),
#   - the browser test page's packages (npm ci in interop/browser: js-libp2p, esbuild, puppeteer-core),
#   - the rust-libp2p test peer (cargo build --release in interop/rust-libp2p-peer),
# then runs the workspace's tests (unit, property, end-to-end and interop).
set -euo pipefail
cd "$(dirname "$0")"

step() { printf '\n==> %s\n' "$*"; }

# Debian packages the build and the tests use: libssl-dev + pkg-config (the Noise
# transport's ChaCha20-Poly1305 comes from libcrypto), Node.js/npm (test peers), Chromium
# (browser test), iproute2 + nftables (the NAT test bed). Installed when root and missing.
need=()
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
{ command -v pkg-config >/dev/null 2>&1 && pkg-config --exists openssl; } || need+=(libssl-dev)
command -v npm >/dev/null 2>&1 || need+=(nodejs npm)
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
{ command -v nft >/dev/null 2>&1 || command -v iptables >/dev/null 2>&1; } || need+=(nftables)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        step "installing Debian packages: ${need[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    else
        echo "missing: ${need[*]} — install them (e.g. apt-get install ${need[*]}) and rerun" >&2
        exit 1
    fi
fi

# perf (Debian's linux-perf) for the benchmark harness's profile workload; optional: without
# it (or where the kernel refuses perf events, as in some containers) the harness notes that
# it skipped the profile.
if ! command -v perf >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    step "installing Debian's linux-perf (optional: the harness's profile workload)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null; } ||
        echo "note: could not install linux-perf; the harness will skip its profile workload" >&2
fi

step "js-libp2p test peer: npm ci in interop/js"
(cd interop/js && npm ci --no-audit --no-fund --loglevel=error)

step "js-libp2p 0.42 (circuit relay v1) test peer: npm ci in interop/js-v1"
(cd interop/js-v1 && npm ci --no-audit --no-fund --loglevel=error)

step "browser test page: npm ci in interop/browser"
(cd interop/browser && npm ci --no-audit --no-fund --loglevel=error)

step "rust-libp2p test peer: cargo build --release (a few minutes when cold)"
cargo build --release --locked --manifest-path interop/rust-libp2p-peer/Cargo.toml

step "cargo test --workspace"
# CI=true makes the interop tests fail (not skip) when a peer is missing.
export CI="${CI:-true}"
cargo test --workspace --locked --no-fail-fast

step "benchmark harness smoke run (every workload, tiny sizes; fails only on errors, never on speed)"
cargo build --release --locked -p circuit-cli -p circuit-delayline
cargo run --release --locked -p circuit-bench -- --quick --strict --no-write
