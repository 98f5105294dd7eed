#!/usr/bin/env bash
# Installs Autobahn|Testsuite's `wstest` (a Python 2.7 program) into a virtualenv.
#
#   bash tools/autobahn/install.sh [VENV]     # default VENV: /tmp/corecast-autobahn-py27
#
# Idempotent: returns at once when VENV/bin/wstest already works, TLS included. Nothing is
# installed system-wide. Python packages come from PyPI, pinned by constraints-py27.txt beside
# this file.
#
# wss:// (run.sh with TLS=1) needs Twisted's TLS: pyOpenSSL over cryptography, and
# service_identity. They are named here, not left to autobahntestsuite's dependencies, and
# their import is checked. The pins are the versions autobahntestsuite 25.10.1 itself
# requires (==): pyOpenSSL 19.1.0 and service-identity 18.1.0 over cryptography 3.3.2, the
# last cryptography for Python 2.7, whose manylinux wheel brings its own OpenSSL 1.1.1 (so
# TLS 1.3 too), whatever the interpreter was built against.
#
# The Python 2.7 interpreter is the first of:
#   $PY27, `python2.7` on PATH, pyenv's 2.7.x (~/.pyenv/versions/2.7.*),
#   or Debian 11 (bullseye) python2.7 packages unpacked under VENV.py27 with `dpkg -x`
#   (Debian 12 no longer ships Python 2).
set -euo pipefail

dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
venv=${1:-${AUTOBAHN_VENV:-/tmp/corecast-autobahn-py27}}
wstest="$venv/bin/wstest"

# The venv's interpreter; one unpacked from Debian packages needs their libraries.
venv_python() {
    if [ -d "$venv.py27/usr/lib/x86_64-linux-gnu" ]; then
        LD_LIBRARY_PATH="$venv.py27/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
            "$venv/bin/python" "$@"
    else
        "$venv/bin/python" "$@"
    fi
}
tls_works() {
    venv_python -W ignore -c 'import OpenSSL.SSL, service_identity, twisted.internet.ssl' 2>/dev/null
}

if [ -x "$wstest" ] && "$wstest" --help >/dev/null 2>&1 && tls_works; then
    exit 0
fi
echo "installing wstest into $venv (about a minute)" >&2
rm -rf "$venv"

find_py27() {
    local c
    for c in "${PY27:-}" "$(command -v python2.7 || true)" "${PYENV_ROOT:-$HOME/.pyenv}"/versions/2.7*/bin/python2.7; do
        if [ -n "$c" ] && [ -x "$c" ] && "$c" -c 'import sys, ssl; assert sys.version_info[:2] == (2, 7)' 2>/dev/null; then
            echo "$c"; return 0
        fi
    done
    return 1
}

libpath=""
if ! py27=$(find_py27); then
    # Unpack Debian bullseye's python2.7 (and the two libraries it needs that bookworm lacks)
    # into a private root, using apt with a private state directory.
    root="$venv.py27"
    apt_dir="$venv.apt"
    rm -rf "$root" "$apt_dir"
    mkdir -p "$root" "$apt_dir/sources" "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/debs"
    mirror=$(sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
    mirror=${mirror:-http://deb.debian.org/debian}
    cat > "$apt_dir/sources/bullseye.sources" <<SRC
Types: deb
URIs: $mirror
Suites: bullseye
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    apt_opts=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$apt_dir/sources"
              -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache")
    apt-get "${apt_opts[@]}" -qq update
    (cd "$apt_dir/debs" && apt-get "${apt_opts[@]}" -qq download \
        python2.7 python2.7-minimal python2.7-dev libpython2.7 libpython2.7-minimal \
        libpython2.7-stdlib libpython2.7-dev libssl1.1 libffi7)
    for deb in "$apt_dir"/debs/*.deb; do dpkg -x "$deb" "$root"; done
    py27="$root/usr/bin/python2.7"
    libpath="$root/usr/lib/x86_64-linux-gnu"
    export LD_LIBRARY_PATH="$libpath${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export CFLAGS="-I$root/usr/include/python2.7 -I$root/usr/include ${CFLAGS:-}"
    "$py27" -c 'import sys, ssl; assert sys.version_info[:2] == (2, 7)'
fi

# Python 2 has no `venv` module; virtualenv before 20.22 can still create 2.7 environments.
# It runs from a small Python 3 venv of its own.
helper="$venv.virtualenv"
if ! [ -x "$helper/bin/virtualenv" ]; then
    rm -rf "$helper"
    python3 -m venv "$helper"
    "$helper/bin/pip" install -q --disable-pip-version-check 'virtualenv<20.22'
fi
"$helper/bin/virtualenv" -q --no-periodic-update --app-data "$helper/app-data" -p "$py27" "$venv"
"$venv/bin/pip" install -q --no-cache-dir --disable-pip-version-check \
    -c "$dir/constraints-py27.txt" autobahntestsuite==25.10.1 pyOpenSSL service-identity 2>&1 \
    | { grep -v -e DEPRECATION -e 'pip 21.0' -e '^$' || true; } >&2

if [ -n "$libpath" ]; then
    # The unpacked interpreter needs bullseye's libssl1.1/libffi7 at run time too.
    mv "$wstest" "$wstest.bin"
    printf '#!/bin/sh\nLD_LIBRARY_PATH="%s${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "%s" "$@"\n' \
        "$libpath" "$wstest.bin" > "$wstest"
    chmod +x "$wstest"
fi
"$wstest" --help >/dev/null
tls_works || { echo "wstest's TLS (pyOpenSSL, service_identity) does not import" >&2; exit 1; }
echo "installed $wstest" >&2
