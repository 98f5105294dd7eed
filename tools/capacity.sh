#!/usr/bin/env bash
# The backplane's capacity figures in docs/cluster.md ("Capacity"): Redis CPU per forwarded
# message, the receiving node's CPU per message, and cross-node latency. Starts a private
# redis-server on port $RPORT (default 6390), node A (1 worker, pinned to core 0) and node B
# (1 worker, unpinned), both with --redis; 10 subscribers on B (a second corecast-load that
# also publishes once a second); then `broadcast --subscribers 10 --publishers 10 --rate
# $RATE` against A with the load on core 1. CPU is read from /proc/PID/stat around A's run.
#
#   tools/capacity.sh            # RATE=20000
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
RATE=${RATE:-20000}
RPORT=${RPORT:-6390}
cargo build --release --workspace --quiet
S=target/release/corecast
L=target/release/corecast-load
tmp=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"' EXIT

redis-server --port "$RPORT" --save "" --appendonly no --daemonize no --loglevel warning >/dev/null 2>&1 &
rpid=$!; pids+=("$rpid")
sleep 0.5
taskset -c 0 "$S" --workers 1 --listen 127.0.0.1:9601 --admin-listen 127.0.0.1:9602 \
    --redis "redis://127.0.0.1:$RPORT" 2>"$tmp/a.log" &
apid=$!; pids+=("$apid")
"$S" --workers 1 --no-pin --listen 127.0.0.1:9611 --admin-listen 127.0.0.1:9612 \
    --redis "redis://127.0.0.1:$RPORT" 2>"$tmp/b.log" &
bpid=$!; pids+=("$bpid")
sleep 1
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
metric() { curl -s "127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m {print $2}'; }

"$L" --url ws://127.0.0.1:9611 --json --duration 14 --warmup 1 \
    broadcast --subscribers 10 --publishers 1 --rate 1 > "$tmp/b.json" 2>/dev/null &
lb=$!
sleep 2
r0=$(ticks "$rpid"); b0=$(ticks "$bpid"); f0=$(metric 9602 corecast_backplane_forwarded_total)
taskset -c 1 "$L" --url ws://127.0.0.1:9601 --json --server-pid "$apid" --server-core 0 \
    --duration 10 --warmup 1 broadcast --subscribers 10 --publishers 10 --rate "$RATE" \
    > "$tmp/a.json" 2>/dev/null
r1=$(ticks "$rpid"); b1=$(ticks "$bpid"); f1=$(metric 9602 corecast_backplane_forwarded_total)
wait "$lb"
failed=$(metric 9602 corecast_backplane_forward_failed_total)
python3 - "$r0" "$r1" "$b0" "$b1" "$f0" "$f1" "$(getconf CLK_TCK)" "$failed" "$tmp" <<'PY'
import json, sys
r0, r1, b0, b1, f0, f1, tck, failed = map(float, sys.argv[1:9])
tmp = sys.argv[9]
fw = f1 - f0
a = json.load(open(tmp + "/a.json"))
b = json.load(open(tmp + "/b.json"))
print(f"forwarded by A during its run: {fw:.0f} (forward_failed {failed:.0f})")
print(f"Redis CPU: {(r1 - r0) / tck:.2f} s = {1e6 * (r1 - r0) / tck / fw:.2f} us per forwarded message")
print(f"node B CPU: {(b1 - b0) / tck:.2f} s = {1e6 * (b1 - b0) / tck / fw:.2f} us per message received and delivered to its 10 subscribers")
print(f"node A: {a['deliveries_per_sec']} local deliveries/s, core 0 busy {a['server_core_busy_pct']}%, lost {a['lost']}")
lat = b.get("latency_us") or {}
print(f"cross-node (A -> Redis -> B): p50 {lat.get('p50')} us, p99 {lat.get('p99')} us")
PY
