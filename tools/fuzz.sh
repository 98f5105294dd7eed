#!/usr/bin/env bash
# Runs each cargo-fuzz target for a bounded time (default 60 s each) and fails on any crash.
#   tools/fuzz.sh [SECONDS] [TARGET...]     targets: json frames handshake
# libFuzzer needs nightly-only rustc flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain accept
# them. Installs cargo-fuzz if it is missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../fuzz"
SECS=${1:-60}; shift || true
TARGETS=("$@"); [ ${#TARGETS[@]} -gt 0 ] || TARGETS=(json frames handshake)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
for t in "${TARGETS[@]}"; do
    mkdir -p "corpus/$t"
    echo "== fuzzing $t for ${SECS}s"
    cargo fuzz run "$t" "corpus/$t" -- -max_total_time="$SECS" -rss_limit_mb=1024 2>&1 | tail -3
done
