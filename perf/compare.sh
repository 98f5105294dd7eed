#!/usr/bin/env bash
# A/B throughput comparison of two corecast server binaries under one corecast-load scenario.
#
#   perf/compare.sh BIN_A BIN_B [RUNS] -- SCENARIO [corecast-load args]
#   perf/compare.sh /tmp/corecast.base target/release/corecast 5 -- echo --conns 100 --depth 16 --size 32 --duration 10
#
# Runs A, B, A, B, ... RUNS times each (default 5), each run against a freshly started server
# (`--workers 1`, pinned to core $SERVER_CORE=0) with the load pinned to core $LOAD_CORE=1.
# Interleaving spreads slow drifts (thermal, background jobs) over both binaries alike.
# Takes the metric from `corecast-load ... --json`: $METRIC if set, else messages_per_sec,
# else deliveries_per_sec (a dotted path such as METRIC=latency_us.p99 picks a nested key;
# for latencies lower is better); also shows server_core_busy_pct and server_cpu_pct. Prints every
# run, the medians, the median of the per-pair ratios B/A, and the ratio of the medians.
#
# Environment: METRIC, LOADGEN (default: $CARGO_TARGET_DIR or target, /release/corecast-load),
# SERVER_ARGS (extra server flags for both), SETTLE=2 (seconds between runs),
# SERVER_CORE=0 LOAD_CORE=1, OUT (directory for raw JSON; default a temp dir, printed).
set -euo pipefail

usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; }
if [ $# -lt 4 ]; then
    usage
    exit 1
fi
BIN_A=$1
BIN_B=$2
shift 2
RUNS=5
if [ "$1" != -- ]; then
    RUNS=$1
    shift
fi
[ "${1:-}" = -- ] || {
    usage
    exit 1
}
shift
[ $# -ge 1 ] || {
    usage
    exit 1
}
case $RUNS in '' | *[!0-9]* | 0) echo "RUNS must be a positive integer, not '$RUNS'" >&2; exit 1 ;; esac
SCENARIO=$1
shift
LOAD_ARGS_USER=("$@")

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=perf/common.sh
. "$ROOT/perf/common.sh"

LOADGEN=${LOADGEN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/corecast-load}
SETTLE=${SETTLE:-2}
for b in "$BIN_A" "$BIN_B" "$LOADGEN"; do
    [ -x "$b" ] || die 1 "not an executable: $b"
done
# The binaries may be rebuilt while this runs; copy them so every run uses the same ones.
OUT=${OUT:-$(mktemp -d /tmp/corecast-compare.XXXXXX)}
mkdir -p "$OUT"
cp "$BIN_A" "$OUT/server-A"
cp "$BIN_B" "$OUT/server-B"
cp "$LOADGEN" "$OUT/corecast-load"

stop_children_on_exit

raise_nofile
LIMIT=$(load_timeout "${LOAD_ARGS_USER[@]}")
log "A = $BIN_A"
log "B = $BIN_B"
log "load: corecast-load $SCENARIO ${LOAD_ARGS_USER[*]} --json  (server core $SERVER_CORE, load core $LOAD_CORE, $RUNS runs each, raw output in $OUT)"

# extract FILE -> "metric_name value busy cpu" (missing values as "-")
extract() {
    python3 - "$1" "${METRIC:-}" <<'PY'
import json, sys
path, want = sys.argv[1], sys.argv[2]
try:
    with open(path) as f:
        r = json.load(f)
except Exception as e:
    print(f"error - - -  # {path}: {e}")
    sys.exit(0)
def get(obj, dotted):  # METRIC may name a nested key, e.g. latency_us.p99
    for part in dotted.split("."):
        obj = obj.get(part) if isinstance(obj, dict) else None
    return obj
keys = [want] if want else ["messages_per_sec", "deliveries_per_sec"]
name, val = keys[0], None
for k in keys:
    if get(r, k) is not None:
        name, val = k, get(r, k)
        break
fmt = lambda v: "-" if v is None else f"{v:.6g}" if isinstance(v, (int, float)) else str(v)
print(name, fmt(val), fmt(r.get("server_core_busy_pct")), fmt(r.get("server_cpu_pct")))
PY
}

printf '%-4s %-3s %16s %10s %10s  %s\n' run bin value core_busy% proc_cpu% metric
for i in $(seq 1 "$RUNS"); do
    for side in A B; do
        PORT=$(pick_port)
        json=$OUT/$side-$i.json
        start_server "$OUT/server-$side" "$PORT" "$OUT/$side-$i.server.log" ||
            die 1 "server $side did not start (log: $OUT/$side-$i.server.log)"
        timeout "$LIMIT" taskset -c "$LOAD_CORE" "$OUT/corecast-load" "$SCENARIO" \
            --url "ws://127.0.0.1:$PORT" --server-pid "$SERVER_PID" --server-core "$SERVER_CORE" \
            --json "${LOAD_ARGS_USER[@]}" >"$json" 2>"$OUT/$side-$i.load.err" &
        LOAD_PID=$!
        rc=0
        wait "$LOAD_PID" || rc=$?
        LOAD_PID=
        stop_server
        [ "$rc" -eq 0 ] || log "run $i $side: corecast-load exited with $rc ($(tail -n 1 "$OUT/$side-$i.load.err"))"
        read -r name value busy cpu < <(extract "$json")
        echo "$side $i $value $busy $cpu $name" >>"$OUT/results.txt"
        printf '%-4s %-3s %16s %10s %10s  %s\n' "$i" "$side" "$value" "$busy" "$cpu" "$name"
        sleep "$SETTLE"
    done
done

python3 - "$OUT/results.txt" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
def num(s):
    try:
        return float(s)
    except ValueError:
        return None
val = {(r[0], int(r[1])): num(r[2]) for r in rows}
busy = {(r[0], int(r[1])): num(r[3]) for r in rows}
runs = sorted({k[1] for k in val})
med = {}
for side in "AB":
    xs = [val[(side, i)] for i in runs if val.get((side, i)) is not None]
    med[side] = statistics.median(xs) if xs else None
    bs = [busy[(side, i)] for i in runs if busy.get((side, i)) is not None]
    spread = f", min {min(xs):.6g}, max {max(xs):.6g}" if xs else ""
    b = f"; median server core busy {statistics.median(bs):.1f}%" if bs else ""
    print(f"median {side}: {med[side] if med[side] is None else f'{med[side]:.6g}'} ({len(xs)} runs{spread}){b}")
ratios = [val[("B", i)] / val[("A", i)] for i in runs
          if val.get(("A", i)) and val.get(("B", i)) is not None]
if ratios:
    print(f"median ratio B/A (per pair): {statistics.median(ratios):.4f}  "
          f"[pairs: {' '.join(f'{r:.3f}' for r in ratios)}]")
if med["A"] and med["B"] is not None:
    print(f"ratio of medians B/A:        {med['B'] / med['A']:.4f}")
low = [k for k, v in busy.items() if v is not None and v < 90]
if low:
    print(f"note: server core busy < 90% in {len(low)} run(s): the server was not saturated, "
          "so the load generator (or the scenario's rate) may have set the pace")
if any(v is None for v in busy.values()):
    print("note: server_core_busy_pct missing in some runs")
PY
log "raw results: $OUT"
