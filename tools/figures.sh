#!/usr/bin/env bash
# Reproduces the performance figures in docs/performance.md on a 2-core machine: the server pinned to
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
#   DEFLATE=1 tools/figures.sh [deflate|...]     the same pairs with plain against
#                                                permessage-deflate (server
#                                                --permessage-deflate, load --deflate)
#   `deflate` (not in `all`): 1 KiB JSON documents to 10k subscribers at 5 and 10/s (at 20/s
#   the server core saturates, and past that the load generator's inflating), and 10k idle
#   connections, meant for DEFLATE=1
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
DEFLATE=${DEFLATE:-0}
# What a pair's second run is: wss (BOTH=1) or deflate (DEFLATE=1); empty: no pairs.
PAIR=""
[ "$BOTH" = 1 ] && PAIR=wss
[ "$DEFLATE" = 1 ] && PAIR=deflate
SINGLE=ws
[ "$TLS" = 1 ] && SINGLE=wss
tls_dir=$(mktemp -d)
trap 'rm -rf "$tls_dir"' EXIT
if [ "$TLS" = 1 ] || [ "$BOTH" = 1 ]; then
    # CA:FALSE: rustls refuses a CA certificate as a server's own.
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
        -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
        -addext basicConstraints=critical,CA:FALSE \
        -keyout "$tls_dir/key.pem" -out "$tls_dir/cert.pem" 2>/dev/null
fi

# one_run MODE LOADGEN-ARGS...: one run (MODE ws, wss or deflate) against a fresh pinned
# server; prints its JSON.
one_run() {
    local mode=$1; shift
    local server_args=() url="ws://127.0.0.1:$PORT" load_args=()
    if [ "$mode" = wss ]; then
        server_args=(--tls-cert "$tls_dir/cert.pem" --tls-key "$tls_dir/key.pem")
        url="wss://localhost:$PORT"
        load_args=(--ca "$tls_dir/cert.pem")
    elif [ "$mode" = deflate ]; then
        server_args=(--permessage-deflate)
        load_args=(--deflate)
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

# run NAME METRIC LOADGEN-ARGS...: RUNS runs, each against a fresh pinned server. With
# BOTH=1 or DEFLATE=1 each run is a pair, plain then wss or deflate (alternating which goes
# first, so drift cancels).
run() {
    local name=$1 metric=$2; shift 2
    local results=()
    for i in $(seq "$RUNS"); do
        if [ -n "$PAIR" ]; then
            local a b
            if [ $((i % 2)) = 1 ]; then
                a=$(one_run ws "$@"); b=$(one_run "$PAIR" "$@")
            else
                b=$(one_run "$PAIR" "$@"); a=$(one_run ws "$@")
            fi
            results+=("$(pair "$a" "$b")")
        else
            results+=("$(one_run "$SINGLE" "$@")")
        fi
    done
    if [ -n "$PAIR" ]; then
        printf '%s\n' "${results[@]}" | python3 -c '
import json, statistics, sys
name, metric, other = sys.argv[1], sys.argv[2], sys.argv[3]
ratios = []
for line in sys.stdin:
    p = json.loads(line)
    ws, b = p["a"], p["b"]
    line = []
    for k, r in (("ws", ws), (other, b)):
        lat = r.get("latency_us") or {}
        extra = ""
        if r.get("bytes_per_delivery") is not None:
            extra = " bytes/delivery=%s" % r["bytes_per_delivery"]
        line.append("%s %s=%s p50=%sus p99=%sus busy=%s%% loadgen=%s%%%s"
                    % (k, metric, r.get(metric), lat.get("p50"), lat.get("p99"),
                       r.get("server_core_busy_pct"), r.get("loadgen_cpu_pct"), extra))
    if ws.get(metric) and b.get(metric):
        ratios.append(b[metric] / ws[metric])
        line.append("%s/ws=%.3f" % (other, ratios[-1]))
    print("  %s: %s" % (name, "  ".join(line)))
if ratios:
    print(f"{name}: median {other}/ws {metric} = {statistics.median(ratios):.3f} over {len(ratios)} pairs")
else:
    print(f"{name}: no result"); sys.exit(1)
' "$name" "$metric" "$PAIR"
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

# pair PLAIN-JSON OTHER-JSON: one line holding both.
pair() {
    python3 -c 'import json,sys; print(json.dumps({"a": json.loads(sys.argv[1] or "{}"), "b": json.loads(sys.argv[2] or "{}")}))' "$1" "$2"
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
case $WHAT in deflate)
    for rate in 5 10; do
        run "1 KiB JSON to 10k subs @${rate}/s" server_core_busy_pct --duration "$DURATION" \
            --warmup 2 broadcast --subscribers 10000 --rate "$rate" --size 1024
    done
    run "idle 10000" rss_per_conn_bytes --src-ips 4 connect --conns 10000 --rate 5000 --hold 3 ;;
esac
case $WHAT in idle|all)
    for n in 10000 19500; do
        run "idle ${n}" rss_per_conn_bytes --src-ips 4 connect --conns "$n" --rate 5000 --hold 3
    done ;;
esac
