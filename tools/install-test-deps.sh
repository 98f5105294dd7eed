#!/usr/bin/env bash
# Installs what the tests need beyond Rust: the Python `websockets`, `PyJWT` and
# `cryptography` packages (tests/clients/requirements.txt) for the `python3` on PATH (with
# Debian's python3-pip when pip is missing) and the Node `ws` and `jose` packages
# (tests/clients/package-lock.json) into tests/clients/node_modules, for
# tests/independent_clients.rs and tests/auth.rs (the WebSocket clients, and tokens minted
# by libraries corecast did not write); the openssl CLI (Debian package `openssl`), which
# tests/tls.rs uses to make RSA and SEC1 EC keys, the formats rcgen does not write; and
# redis-server (Debian package `redis-server`, Redis 7), which tests/backplane.rs starts,
# one per test, and haproxy and nginx, which tests/load_balancers.rs runs with deploy/'s
# configs (the packages' own services are not needed and not started); Debian's chromium
# (with the DejaVu fonts for legible screenshots) and the Node `playwright-core` package
# (tests/browser/package-lock.json) into tests/browser/node_modules, for the web console's
# browser test, tools/browser-test.sh (playwright drives /usr/bin/chromium: it never
# downloads a browser of its own); systemd-analyze (Debian package `systemd`), with which
# tests/config.rs verifies deploy/corecast.service (only the tool is used: no systemd needs
# to run, and none is started in a container). It also turns on
# net.ipv4.tcp_migrate_req (Linux 5.14+, per network namespace, needs root), which the
# --reuse-port restart test in tests/restart.rs relies on, as a production host would.
# Idempotent and quiet: does nothing when all are already there at the pinned versions.
#
# Python: `pip install --user` into the user site (~/.local), which the `python3` the test
# runs sees without a virtualenv. On an interpreter marked externally managed (PEP 668,
# Debian's own /usr/bin/python3) --break-system-packages is added: it still only writes to
# ~/.local, never to the system site-packages.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
clients="$repo/tests/clients"
browser="$repo/tests/browser"

apt_missing=()
command -v openssl >/dev/null || apt_missing+=(openssl)
[ -x /usr/bin/redis-server ] || command -v redis-server >/dev/null || apt_missing+=(redis-server)
[ -x /usr/sbin/haproxy ] || command -v haproxy >/dev/null || apt_missing+=(haproxy)
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null || apt_missing+=(nginx)
[ -x /usr/bin/chromium ] || apt_missing+=(chromium)
[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || apt_missing+=(fonts-dejavu-core)
command -v systemd-analyze >/dev/null || apt_missing+=(systemd)
python3 -c "import pip" 2>/dev/null || apt_missing+=(python3-pip)
if [ "${#apt_missing[@]}" -gt 0 ]; then
    apt-get update -qq
    # policy-rc.d: no service is started by the install (the tests start their own).
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt_missing[@]}" >/dev/null
fi

# Every `name==version` of requirements.txt, as installed for this python3 (case and `-`/`_`
# do not matter to pip, nor here); an empty list when all match.
py_stale=$(python3 - "$clients/requirements.txt" <<'PY'
import re, sys
from importlib import metadata
for line in open(sys.argv[1]):
    line = line.split("#")[0].strip()
    if not line:
        continue
    name, want = line.split("==")
    try:
        have = metadata.version(re.sub(r"[-_.]+", "-", name))
    except metadata.PackageNotFoundError:
        have = None
    if have != want:
        print("%s (have %s, want %s)" % (name, have, want))
PY
)
if [ -n "$py_stale" ]; then
    extra=()
    if python3 -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")))'; then
        extra+=(--break-system-packages)
    fi
    python3 -m pip install --user -q --disable-pip-version-check --no-warn-script-location \
        "${extra[@]}" -r "$clients/requirements.txt" 2>&1 | { grep -v "Running pip as the 'root' user" || true; } >&2
    python3 -c 'import websockets, jwt, cryptography' \
        || { echo "websockets, PyJWT or cryptography still not importable by python3" >&2; exit 1; }
fi

# Each top-level package of the lock (ws, jose), against what node_modules holds.
node_stale=$(python3 - "$clients" <<'PY'
import json, os, sys
clients = sys.argv[1]
lock = json.load(open(os.path.join(clients, "package-lock.json")))
for name in lock["packages"][""]["dependencies"]:
    want = lock["packages"]["node_modules/" + name]["version"]
    try:
        have = json.load(open(os.path.join(clients, "node_modules", name, "package.json")))["version"]
    except OSError:
        have = None
    if have != want:
        print("%s (have %s, want %s)" % (name, have, want))
PY
)
if [ -n "$node_stale" ]; then
    npm ci --prefix "$clients" --no-audit --no-fund --loglevel=error >/dev/null
fi

want_pw=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["packages"]["node_modules/playwright-core"]["version"])' "$browser/package-lock.json")
have_pw=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["version"])' "$browser/node_modules/playwright-core/package.json" 2>/dev/null || true)
if [ "$have_pw" != "$want_pw" ]; then
    npm ci --prefix "$browser" --no-audit --no-fund --loglevel=error >/dev/null
fi

migrate=/proc/sys/net/ipv4/tcp_migrate_req
if [ -e "$migrate" ] && [ "$(cat "$migrate")" != 1 ]; then
    echo 1 > "$migrate" 2>/dev/null \
        || echo "warning: cannot set net.ipv4.tcp_migrate_req=1 (not root?): tests/restart.rs will fail" >&2
fi
