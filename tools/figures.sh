#!/usr/bin/env bash
# Reproduces the performance figures in README.md on a 2-core machine: the server pinned to
# core 0 with one worker, the load generator pinned to core 1. Each scenario runs RUNS times
# against a fresh server; the median is printed with every run's numbers, so the saturated
# side can be read off (server_core_busy_pct is core 0's busy time from /proc/stat,
# softirq included; loadgen_cpu_pct is the load generator's own CPU).
#
#   tools/figures.sh [echo|broadcast|idle|all]   (default all; RUNS=3, DURATION=10)
#   TLS=1 tools/figures.sh ...                   the same over wss:// (a throw-away P-256
#                                                certificate made with the openssl CLI)
#   BOTH=1 tools/figures.sh ...                  each run plain then wss, pairs interleaved,
#                                                with the wss/ws ratio of each pair
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
RUNS=${RUNS:-3}
DURATION=${DURATION:-10}
WHAT=${1:-all}
PORT=${PORT:-9400}

cargo build --release --workspace --quiet
SERVER=target/release/corecast
LOAD=target/release/corecast-load

TLS=${TLS:-0}
BOTH=${BOTH:-0}
tls_dir=$(mktemp -d)
trap 'rm -rf "$tls_dir"' EXIT
if [ "$TLS" = 1 ] || [ "$BOTH" = 1 ]; then
    # CA:FALSE: rustls refuses a CA certificate as a server's own.
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
        -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
        -addext basicConstraints=critical,CA:FALSE \
        -keyout "$tls_dir/key.pem" -out "$tls_dir/cert.pem" 2>/dev/null
fi

# one_run TLS METRIC LOADGEN-ARGS...: one run against a fresh pinned server; prints its JSON.
one_run() {
    local tls=$1; shift
    local server_args=() url="ws://127.0.0.1:$PORT" load_args=()
    if [ "$tls" = 1 ]; then
        server_args=(--tls-cert "$tls_dir/cert.pem" --tls-key "$tls_dir/key.pem")
        url="wss://localhost:$PORT"
        load_args=(--ca "$tls_dir/cert.pem")
    fi
    taskset -c 0 "$SERVER" --workers 1 --listen "127.0.0.1:$PORT" --admin-listen off \
        "${server_args[@]}" 2>/dev/null &
    local pid=$!
    sleep 0.5
    timeout 300 taskset -c 1 "$LOAD" --url "$url" "${load_args[@]}" --server-pid "$pid" \
        --server-core 0 --json "$@" 2>/dev/null || true
    kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
    PORT=$((PORT + 1))
}

# run NAME METRIC LOADGEN-ARGS...: RUNS runs, each against a fresh pinned server. With BOTH=1
# each run is a pair, plain then wss (alternating which goes first, so drift cancels).
run() {
    local name=$1 metric=$2; shift 2
    local results=()
    for i in $(seq "$RUNS"); do
        if [ "$BOTH" = 1 ]; then
            local first=0 second=1
            if [ $((i % 2)) = 0 ]; then first=1 second=0; fi
            local a b
            a=$(one_run "$first" "$@")
            b=$(one_run "$second" "$@")
            if [ "$first" = 0 ]; then results+=("$(pair "$a" "$b")"); else results+=("$(pair "$b" "$a")"); fi
        else
            results+=("$(one_run "$TLS" "$@")")
        fi
    done
    if [ "$BOTH" = 1 ]; then
        printf '%s\n' "${results[@]}" | python3 -c '
import json, statistics, sys
name, metric = sys.argv[1], sys.argv[2]
ratios = []
for line in sys.stdin:
    p = json.loads(line)
    ws, wss = p["ws"], p["wss"]
    line = []
    for k, r in (("ws", ws), ("wss", wss)):
        lat = r.get("latency_us") or {}
        line.append("%s %s=%s p50=%sus p99=%sus busy=%s%% loadgen=%s%%"
                    % (k, metric, r.get(metric), lat.get("p50"), lat.get("p99"),
                       r.get("server_core_busy_pct"), r.get("loadgen_cpu_pct")))
    if ws.get(metric) and wss.get(metric):
        ratios.append(wss[metric] / ws[metric])
        line.append("wss/ws=%.3f" % ratios[-1])
    print("  %s: %s" % (name, "  ".join(line)))
if ratios:
    print(f"{name}: median wss/ws {metric} = {statistics.median(ratios):.3f} over {len(ratios)} pairs")
else:
    print(f"{name}: no result"); sys.exit(1)
' "$name" "$metric"
        return
    fi
    printf '%s\n' "${results[@]}" | python3 -c '
import json, statistics, sys
name, metric = sys.argv[1], sys.argv[2]
runs = [json.loads(l) for l in sys.stdin if l.strip()]
for r in runs:
    lat = r.get("latency_us") or {}
    g = lambda k: r.get(k)
    print("  %s: %s=%s p50=%sus p99=%sus lost=%s server_core_busy=%s%% server_cpu=%s%% loadgen_cpu=%s%%"
          % (name, metric, g(metric), lat.get("p50"), lat.get("p99"), g("lost"),
             g("server_core_busy_pct"), g("server_cpu_pct"), g("loadgen_cpu_pct")))
vals = [r[metric] for r in runs if r.get(metric) is not None]
if vals:
    print(f"{name}: median {metric} = {statistics.median(vals):,.0f} over {len(vals)} runs")
else:
    print(f"{name}: no result"); sys.exit(1)
' "$name" "$metric"
}

# pair PLAIN-JSON TLS-JSON: one line holding both.
pair() {
    python3 -c 'import json,sys; print(json.dumps({"ws": json.loads(sys.argv[1] or "{}"), "wss": json.loads(sys.argv[2] or "{}")}))' "$1" "$2"
}

case $WHAT in echo|all)
    run "echo raw 100x16x32B" messages_per_sec --duration "$DURATION" --warmup 2 \
        echo --conns 100 --depth 16 --size 32 --mode raw ;;
esac
case $WHAT in broadcast|all)
    for rate in 10 100 1000; do
        run "fan-out 10k subs @${rate}/s" deliveries_per_sec --duration "$DURATION" --warmup 2 \
            broadcast --subscribers 10000 --rate "$rate"
    done ;;
esac
case $WHAT in idle|all)
    for n in 10000 19000; do
        run "idle ${n}" rss_per_conn_bytes --src-ips 4 connect --conns "$n" --rate 5000 --hold 3
    done ;;
esac
