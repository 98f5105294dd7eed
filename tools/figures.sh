#!/usr/bin/env bash
# Reproduces the performance figures in README.md on a 2-core machine: the server pinned to
# core 0 with one worker, the load generator pinned to core 1. Each scenario runs RUNS times
# against a fresh server; the median is printed with every run's numbers, so the saturated
# side can be read off (server_core_busy_pct is core 0's busy time from /proc/stat,
# softirq included; loadgen_cpu_pct is the load generator's own CPU).
#
#   tools/figures.sh [echo|broadcast|idle|all]   (default all; RUNS=3, DURATION=10)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
RUNS=${RUNS:-3}
DURATION=${DURATION:-10}
WHAT=${1:-all}
PORT=${PORT:-9400}

cargo build --release --workspace --quiet
SERVER=target/release/corecast
LOAD=target/release/corecast-load

# run NAME METRIC LOADGEN-ARGS...: RUNS runs, each against a fresh pinned server.
run() {
    local name=$1 metric=$2; shift 2
    local results=()
    for _ in $(seq "$RUNS"); do
        taskset -c 0 "$SERVER" --workers 1 --listen "127.0.0.1:$PORT" 2>/dev/null &
        local pid=$!
        sleep 0.5
        local out
        out=$(timeout 300 taskset -c 1 "$LOAD" --url "ws://127.0.0.1:$PORT" --server-pid "$pid" \
            --server-core 0 --json "$@" 2>/dev/null) || true
        kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
        results+=("$out")
        PORT=$((PORT + 1))
    done
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
