#!/usr/bin/env bash
# The web console's real-browser test: builds corecast (profile test-release) unless
# CORECAST_BIN names one already built, then drives
# src/console/index.html in Debian's headless Chromium through playwright-core
# (tests/browser/console.test.mjs). Screenshots of each step go to target/browser-test/
# (or $CONSOLE_TEST_OUT).
#
#   tools/browser-test.sh
#
# Needs /usr/bin/chromium and the npm package pinned in tests/browser/package-lock.json:
# tools/install-test-deps.sh installs both. Playwright's own browser builds are never
# downloaded.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

chromium=${CHROMIUM:-/usr/bin/chromium}
if [ ! -x "$chromium" ]; then
    echo "error: $chromium not found: run tools/install-test-deps.sh (installs Debian's chromium)" >&2
    exit 1
fi

# tools/test.sh passes the corecast `cargo test` has just built: a `cargo build` would build
# it again (45 s), with the features the dev-dependencies do not add.
if [ -z "${CORECAST_BIN:-}" ]; then
    cargo build --profile test-release --bin corecast
elif [ ! -x "$CORECAST_BIN" ]; then
    echo "error: CORECAST_BIN=$CORECAST_BIN is not an executable" >&2
    exit 1
fi

browser=tests/browser
if [ ! -d "$browser/node_modules/playwright-core" ] \
    || [ "$browser/package-lock.json" -nt "$browser/node_modules/.package-lock.json" ]; then
    npm ci --prefix "$browser" --no-audit --no-fund --loglevel=error
fi

exec node "$browser/console.test.mjs"
