#!/usr/bin/env bash
# Autobahn|Testsuite (the fuzzingclient of `wstest`) against corecast's /echo endpoint.
#
#   bash tools/autobahn/run.sh
#
# Installs wstest if missing (tools/autobahn/install.sh), builds corecast in release mode,
# starts it on a free loopback port, runs the suite, stops the server with SIGTERM (it must
# exit 0) and summarises reports/autobahn/index.json. The last line printed is
# `N passed, N failed, N skipped`; the exit status is non-zero on any failed case, on fewer
# than MIN_PASSED passed cases, or when the server does not stop cleanly.
#
# Environment (all optional):
#   AUTOBAHN_VENV  wstest's virtualenv        (default /tmp/corecast-autobahn-py27)
#   CASES          JSON list of case globs    (default '["*"]')
#   EXCLUDE        JSON list of case globs    (default '[]': every group 1.* to 13.* runs;
#                                              12.*/13.* report UNIMPLEMENTED, counted as
#                                              skipped, because corecast does not negotiate
#                                              permessage-deflate)
#   MIN_PASSED     least passed cases allowed (default 301, all of 1.* to 11.*)
#   REPORT_DIR     where the report goes      (default reports/autobahn)
#   CARGO_TARGET_DIR is honoured for the build.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
here="$repo/tools/autobahn"
cd "$repo"

venv=${AUTOBAHN_VENV:-/tmp/corecast-autobahn-py27}
cases=${CASES:-'["*"]'}
exclude=${EXCLUDE:-'[]'}
min_passed=${MIN_PASSED:-301}
report_dir=${REPORT_DIR:-reports/autobahn}
started=$(date +%s)

echo "== wstest"
bash "$here/install.sh" "$venv"
wstest="$venv/bin/wstest"

echo "== cargo build --release --bin corecast"
# The build's own JSON messages name the executable, wherever the target directory is.
bin=$(cargo build --release --bin corecast --message-format=json-render-diagnostics \
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
print(exe or "")')
[ -x "$bin" ] || { echo "build produced no corecast executable" >&2; exit 2; }

# A port the kernel just handed out on loopback and released again.
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
url="ws://127.0.0.1:$port/echo"

rm -rf "$report_dir"
mkdir -p "$report_dir"
report_dir=$(cd "$report_dir" && pwd)
server_log="$report_dir/server.log"

echo "== corecast on 127.0.0.1:$port (log: $server_log)"
# 9.* sends messages and single frames of up to 16 MiB, and the echo of one must fit in the
# outbound bound (which must hold a whole message); the admin endpoint is not needed (and
# its default port might be taken).
RUST_LOG=${RUST_LOG:-warn} "$bin" \
    --listen "127.0.0.1:$port" \
    --workers 2 --no-pin \
    --max-message-size 16777216 --max-frame-size 16777216 --max-outbound-bytes 33554432 \
    --admin-listen off \
    > "$server_log" 2>&1 &
server_pid=$!
stop_server() {
    if [ -n "${server_pid:-}" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
}
trap stop_server EXIT

for _ in $(seq 100); do
    if python3 -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 0.2).close()' "$port" 2>/dev/null; then
        break
    fi
    kill -0 "$server_pid" 2>/dev/null || { echo "corecast exited at start:" >&2; cat "$server_log" >&2; exit 2; }
    sleep 0.1
done

spec="$report_dir/fuzzingclient.json"
python3 - "$spec" "$url" "$report_dir" "$cases" "$exclude" <<'PY'
import json, sys
spec, url, outdir, cases, exclude = sys.argv[1:]
with open(spec, "w") as f:
    json.dump({
        "outdir": outdir,
        "servers": [{"agent": "corecast", "url": url}],
        "cases": json.loads(cases),
        "exclude-cases": json.loads(exclude),
        "exclude-agent-cases": {},
    }, f, indent=2)
PY

echo "== wstest -m fuzzingclient against $url: cases $cases, excluding $exclude"
ws_start=$(date +%s)
# wstest exits 0 even when cases fail: the summary below is the verdict.
if ! (cd "$report_dir" && "$wstest" -m fuzzingclient -s "$spec") > "$report_dir/wstest.log" 2>&1; then
    echo "wstest itself failed; last lines of $report_dir/wstest.log:" >&2
    tail -20 "$report_dir/wstest.log" >&2
    exit 2
fi
ws_secs=$(( $(date +%s) - ws_start ))

echo "== stopping corecast (SIGTERM)"
kill -TERM "$server_pid"
server_status=0
wait "$server_pid" || server_status=$?
server_pid=""
trap - EXIT
if [ "$server_status" -ne 0 ]; then
    echo "corecast exited with status $server_status after SIGTERM; last log lines:" >&2
    tail -20 "$server_log" >&2
fi

echo "== report: $report_dir/index.html"
echo "duration: wstest ${ws_secs} s, whole run $(( $(date +%s) - started )) s"
summary_status=0
python3 "$here/summarise.py" "$report_dir/index.json" --min-passed "$min_passed" || summary_status=$?
if [ "$server_status" -ne 0 ]; then
    exit 3
fi
exit "$summary_status"
