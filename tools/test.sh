#!/usr/bin/env bash
# The project's test command, as the README gives it: installs what the tests need, then runs
# every test of the workspace optimised (the `test-release` profile: release without LTO,
# which would cost every test executable minutes of linking). Works on a fresh clone with only Rust, python3,
# node and npm present; `.ci/run` calls exactly this.
#
#   tools/test.sh [extra cargo test arguments...]
#
# Every apt, pip and npm package a test needs is installed by tools/install-test-deps.sh,
# which does nothing when they are already there. Then, with no arguments, the web
# console's browser test (tools/browser-test.sh: Debian's chromium driven by playwright-core).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash tools/install-test-deps.sh
cargo test --workspace --profile test-release "$@"
# The web console in a real (headless) Chromium; it needs the browser, so it is not a cargo
# test. Skipped when arguments pick particular cargo tests.
if [ "$#" -eq 0 ]; then
    CORECAST_BIN=${CORECAST_BIN:-${CARGO_TARGET_DIR:-target}/test-release/corecast} \
        bash tools/browser-test.sh
fi
