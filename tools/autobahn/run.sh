#!/usr/bin/env bash
# Autobahn|Testsuite (the fuzzingclient of `wstest`) against corecast's /echo endpoint.
#
#   bash tools/autobahn/run.sh                      # ws://
#   TLS=1 bash tools/autobahn/run.sh                # wss://, corecast --tls-cert/--tls-key
#   TLS=1 STAND_IN=1 bash tools/autobahn/run.sh     # wss:// against the Python TLS stand-in
#   DEFLATE=1 bash tools/autobahn/run.sh            # corecast --permessage-deflate: all 517
#
# Installs wstest if missing (tools/autobahn/install.sh), builds corecast in release mode,
# starts it on a free loopback port, runs the suite, stops the server with SIGTERM (it must
# exit 0) and summarises the report's index.json. The last line printed is
# `N passed, N failed, N skipped`; the exit status is non-zero on any failed case, on fewer
# than MIN_PASSED passed cases, or when the server does not stop cleanly.
#
# TLS=1 makes a throw-away self-signed certificate and key for 127.0.0.1 with the openssl CLI
# (installed with apt-get when missing), starts corecast with --tls-cert/--tls-key, and points
# wstest at wss://127.0.0.1:PORT/echo. wstest (Twisted's ClientContextFactory, pyOpenSSL)
# does not verify the certificate: the suite tests WebSocket conformance over TLS, and the
# load generator's and clients' tests cover verification. STAND_IN=1 (with TLS=1) runs
# tests/clients/tls_echo_server.py (Python websockets behind Python's ssl) instead of
# corecast, to check the TLS set-up of wstest itself; it also prints the TLS version and
# cipher each session negotiated.
#
# Environment (all optional):
#   AUTOBAHN_VENV  wstest's virtualenv        (default /tmp/corecast-autobahn-py27)
#   CASES          JSON list of case globs    (default '["*"]')
#   EXCLUDE        JSON list of case globs    (default '[]': every group 1.* to 13.* runs;
#                                              12.*/13.* report UNIMPLEMENTED, counted as
#                                              skipped, because corecast does not negotiate
#                                              permessage-deflate)
#   MIN_PASSED     least passed cases allowed (default 301, all of 1.* to 11.*; 517, every
#                                              case, with DEFLATE=1)
#   REPORT_DIR     where the report goes      (default reports/autobahn, or
#                                              reports/autobahn-tls with TLS=1)
#   TLS, STAND_IN, DEFLATE  see above         (default 0; DEFLATE=1 writes reports/autobahn-deflate)
#   JOBS           wstest processes run at once, each on a share of the cases, against the
#                  one server (default 1; 2 with DEFLATE=1, where wstest, not the server, is
#                  the bottleneck: its 216 compression cases take 6 minutes on one core).
#                  Only with the default CASES; each share reports to REPORT_DIR/partN.
#   PROFILE        cargo profile of the corecast it builds and runs (default release)
#   CORECAST_BIN   a corecast already built, run instead of building one (.ci/run passes
#                  the one tools/test.sh's `cargo test` has just built)
#   CARGO_TARGET_DIR is honoured for the build.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
here="$repo/tools/autobahn"
cd "$repo"

venv=${AUTOBAHN_VENV:-/tmp/corecast-autobahn-py27}
cases=${CASES:-'["*"]'}
exclude=${EXCLUDE:-'[]'}
deflate=${DEFLATE:-0}
if [ "$deflate" = 1 ]; then
    min_passed=${MIN_PASSED:-517}
    jobs=${JOBS:-2}
else
    min_passed=${MIN_PASSED:-301}
    jobs=${JOBS:-1}
fi
# The shares of JOBS=2, split so both take about as long (per-case durations of a full run
# with DEFLATE=1): the compression groups 12.* and 13.* are nearly all of the time.
if [ "$jobs" != 1 ]; then
    if [ "$jobs" != 2 ] || [ "$cases" != '["*"]' ]; then
        echo "JOBS=$jobs: only JOBS=1, or JOBS=2 with the default CASES, is supported" >&2
        exit 2
    fi
    # 2026-12-02, run in parallel: 12.1 27 s, 12.2 55 s, 12.3 66 s, 12.4 28 s, 12.5 44 s,
    # each 13.x 25-32 s (13.* 199 s), 1.* to 11.* 15 s in all.
    parts=('["1.*","2.*","3.*","4.*","5.*","6.*","7.*","9.*","10.*","12.2.*","12.3.*","12.4.*","12.5.*"]'
           '["8.*","11.*","12.1.*","13.*"]')
else
    parts=("$cases")
fi
tls=${TLS:-0}
stand_in=${STAND_IN:-0}
if [ "$stand_in" = 1 ] && [ "$tls" != 1 ]; then
    echo "STAND_IN=1 needs TLS=1 (the stand-in only speaks TLS)" >&2
    exit 2
fi
if [ "$deflate" = 1 ]; then
    report_dir=${REPORT_DIR:-reports/autobahn-deflate}
    scheme=ws
    [ "$tls" = 1 ] && scheme=wss
elif [ "$tls" = 1 ]; then
    report_dir=${REPORT_DIR:-reports/autobahn-tls}
    scheme=wss
else
    report_dir=${REPORT_DIR:-reports/autobahn}
    scheme=ws
fi
started=$(date +%s)

echo "== wstest"
bash "$here/install.sh" "$venv"
wstest="$venv/bin/wstest"

# The build's own JSON messages name the executable, wherever the target directory is.
build_corecast() {
    cargo build --profile "${PROFILE:-release}" --bin corecast --message-format=json-render-diagnostics \
        | python3 -c '
import json, sys
exe = None
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "corecast":
        exe = m["executable"]
print(exe or "")'
}

if [ "$stand_in" = 1 ]; then
    python3 -c 'import websockets.asyncio.server' 2>/dev/null \
        || { echo "the stand-in needs Python websockets: bash tools/install-test-deps.sh" >&2; exit 2; }
else
    if [ -n "${CORECAST_BIN:-}" ]; then
        bin=$CORECAST_BIN
    else
        echo "== cargo build --profile ${PROFILE:-release} --bin corecast"
        bin=$(build_corecast)
    fi
    [ -x "$bin" ] || { echo "build produced no corecast executable" >&2; exit 2; }
    if [ "$tls" = 1 ] && ! "$bin" --help | grep -q -- '--tls-cert'; then
        echo "this corecast has no --tls-cert: the server's TLS has not landed, so TLS=1 cannot run" >&2
        exit 2
    fi
fi

# A port the kernel just handed out on loopback and released again.
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
url="$scheme://127.0.0.1:$port/echo"

rm -rf "$report_dir"
mkdir -p "$report_dir"
report_dir=$(cd "$report_dir" && pwd)
server_log="$report_dir/server.log"

tls_dir=""
server_pid=""
cleanup() {
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    if [ -n "$tls_dir" ]; then rm -rf "$tls_dir"; fi
}
trap cleanup EXIT

deflate_args=()
if [ "$deflate" = 1 ]; then
    deflate_args=(--permessage-deflate)
fi
tls_args=()
if [ "$tls" = 1 ]; then
    if ! command -v openssl >/dev/null; then
        echo "== apt-get install openssl (to make the test certificate)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null
    fi
    tls_dir=$(mktemp -d)
    # A one-day P-256 certificate for 127.0.0.1; CA:FALSE, as a server certificate must be
    # (openssl req -x509 marks it a CA otherwise, which rustls-based clients refuse).
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
        -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
        -addext basicConstraints=critical,CA:FALSE \
        -keyout "$tls_dir/key.pem" -out "$tls_dir/cert.pem" 2>/dev/null
    tls_args=(--tls-cert "$tls_dir/cert.pem" --tls-key "$tls_dir/key.pem")
fi

if [ "$stand_in" = 1 ]; then
    agent=python-websockets-stand-in
    echo "== TLS stand-in (tests/clients/tls_echo_server.py) on 127.0.0.1:$port (log: $server_log)"
    python3 "$repo/tests/clients/tls_echo_server.py" --port "$port" \
        --cert "$tls_dir/cert.pem" --key "$tls_dir/key.pem" \
        --lifetime 1200 > "$server_log" 2>&1 &
else
    agent=corecast
    echo "== corecast on 127.0.0.1:$port${tls_args[*]:+ with TLS} (log: $server_log)"
    # 9.* sends messages and single frames of up to 16 MiB, and the echo of one must fit in
    # the outbound bound (which must hold a whole message); the admin endpoint is not needed
    # (and its default port might be taken).
    RUST_LOG=${RUST_LOG:-warn} "$bin" \
        --listen "127.0.0.1:$port" \
        --workers 2 --no-pin \
        --max-message-size 16777216 --max-frame-size 16777216 --max-outbound-bytes 33554432 \
        --admin-listen off \
        "${tls_args[@]}" "${deflate_args[@]}" \
        > "$server_log" 2>&1 &
fi
server_pid=$!

for _ in $(seq 100); do
    if python3 -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 0.2).close()' "$port" 2>/dev/null; then
        break
    fi
    kill -0 "$server_pid" 2>/dev/null || { echo "$agent exited at start:" >&2; cat "$server_log" >&2; exit 2; }
    sleep 0.1
done

# One fuzzingclient spec per share of the cases; with one share the report is REPORT_DIR
# itself, otherwise REPORT_DIR/part1, part2.
spec_for() {
    local spec=$1 outdir=$2 part_cases=$3
    python3 - "$spec" "$url" "$outdir" "$part_cases" "$exclude" "$agent" <<'PY'
import json, sys
spec, url, outdir, cases, exclude, agent = sys.argv[1:]
with open(spec, "w") as f:
    json.dump({
        "outdir": outdir,
        # No "hostname": wstest then uses Twisted's ClientContextFactory, which does not
        # verify the (throw-away) certificate.
        "servers": [{"agent": agent, "url": url}],
        "cases": json.loads(cases),
        "exclude-cases": json.loads(exclude),
        "exclude-agent-cases": {},
    }, f, indent=2)
PY
}

part_dirs=()
if [ "${#parts[@]}" = 1 ]; then
    part_dirs=("$report_dir")
else
    for i in $(seq "${#parts[@]}"); do
        mkdir -p "$report_dir/part$i"
        part_dirs+=("$report_dir/part$i")
    done
fi

echo "== wstest -m fuzzingclient against $url: cases $cases, excluding $exclude, $jobs at once"
ws_start=$(date +%s)
wstest_pids=()
for i in "${!parts[@]}"; do
    dir=${part_dirs[$i]}
    spec_for "$dir/fuzzingclient.json" "$dir" "${parts[$i]}"
    (cd "$dir" && exec "$wstest" -m fuzzingclient -s "$dir/fuzzingclient.json") > "$dir/wstest.log" 2>&1 &
    wstest_pids+=($!)
done
# wstest exits 0 even when cases fail: the summary below is the verdict.
wstest_failed=0
for i in "${!wstest_pids[@]}"; do
    if ! wait "${wstest_pids[$i]}"; then
        echo "wstest itself failed; last lines of ${part_dirs[$i]}/wstest.log:" >&2
        tail -20 "${part_dirs[$i]}/wstest.log" >&2
        wstest_failed=1
    fi
done
[ "$wstest_failed" = 0 ] || exit 2
ws_secs=$(( $(date +%s) - ws_start ))

echo "== stopping $agent (SIGTERM)"
kill -TERM "$server_pid"
server_status=0
wait "$server_pid" || server_status=$?
server_pid=""
if [ "$server_status" -ne 0 ]; then
    echo "$agent exited with status $server_status after SIGTERM; last log lines:" >&2
    tail -20 "$server_log" >&2
fi
if [ "$stand_in" = 1 ]; then
    # Its last line counts the sessions per negotiated "version cipher alpn".
    echo "stand-in saw: $(tail -1 "$server_log")"
fi

if [ "${#parts[@]}" = 1 ]; then
    echo "== report: $report_dir/index.html"
else
    echo "== reports: $(printf '%s/index.html ' "${part_dirs[@]}")"
fi
echo "duration: wstest ${ws_secs} s, whole run $(( $(date +%s) - started )) s"
summary_status=0
python3 "$here/summarise.py" "${part_dirs[@]/%//index.json}" --min-passed "$min_passed" || summary_status=$?
if [ "$server_status" -ne 0 ]; then
    exit 3
fi
exit "$summary_status"
