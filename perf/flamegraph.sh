#!/usr/bin/env bash
# Profile one corecast worker under a corecast-load scenario and render a CPU flame graph.
#
#   perf/flamegraph.sh SCENARIO [extra corecast-load args]
#   perf/flamegraph.sh echo --conns 100 --depth 16 --size 32 --mode raw
#   perf/flamegraph.sh broadcast --subscribers 10000 --rate 100
#   perf/flamegraph.sh connect --conns 10000 --hold 5
#
# Builds the workspace in release mode, starts `corecast --workers 1` pinned to core
# $SERVER_CORE (0), drives it from core $LOAD_CORE (1), samples the server with
# `perf record -e cpu-clock` during the measurement window, renders
# perf/out/<scenario>-<timestamp>.svg with inferno and prints its path.
#
# Environment (all optional):
#   DURATION=10 WARMUP=2   measurement window and warm-up passed to corecast-load (unless the
#                          extra args already carry --duration / --warmup)
#   PERF_FREQ=999          samples per second
#   CALLGRAPH=auto         fp (perf -g) | dwarf | none | auto (fp, else dwarf, else none)
#   PERF_DELAY, PERF_SECONDS  when sampling starts after the load starts, and for how long
#                          (default: after connection set-up and warm-up, for the window;
#                          for `connect`, the whole run)
#   SKIP_BUILD=1           use the existing binaries
#   SERVER_BIN, LOADGEN    binaries (default: $CARGO_TARGET_DIR or target, /release/...)
#   SERVER_ARGS            extra server flags, e.g. "--max-outbound-bytes 65536"
#   SERVER_CORE=0 LOAD_CORE=1 PORT (default: a free port)
#   KEEP_PERF_DATA=1       keep perf.data next to the SVG (for `perf report -i`)
#   NO_INSTALL=1           never run `cargo install inferno`
#
# Exit codes: 0 ok, 1 a step failed, 2 perf missing or unusable, 3 inferno missing.
set -euo pipefail

usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; }
if [ $# -lt 1 ] || [ "$1" = -h ] || [ "$1" = --help ]; then
    usage
    exit 1
fi
SCENARIO=$1
shift
EXTRA=("$@")

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=perf/common.sh
. "$ROOT/perf/common.sh"

BIN_DIR=${CARGO_TARGET_DIR:-$ROOT/target}/release
SERVER_BIN=${SERVER_BIN:-$BIN_DIR/corecast}
LOADGEN=${LOADGEN:-$BIN_DIR/corecast-load}
PERF_FREQ=${PERF_FREQ:-999}
CALLGRAPH=${CALLGRAPH:-auto}
OUT_DIR=$ROOT/perf/out
STAMP=$(date +%Y%m%d-%H%M%S)
BASE=$OUT_DIR/$SCENARIO-$STAMP
SVG=$BASE.svg

# ---- 1. tools -------------------------------------------------------------------------------
if ! command -v perf >/dev/null 2>&1; then
    die 2 "perf is not installed. On Debian/Ubuntu: sudo apt-get install -y linux-perf (Ubuntu: linux-tools-\$(uname -r)); then rerun."
fi
PROBE_DIR=$(mktemp -d)
SERVER_PID=
LOAD_PID=
PERF_PID=
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_child "$PERF_PID" INT
    stop_child "$LOAD_PID" TERM
    stop_server
    rm -rf "$PROBE_DIR"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if ! timeout 30 perf record -q -e cpu-clock -o "$PROBE_DIR/probe.data" -- true >"$PROBE_DIR/probe.log" 2>&1; then
    cat "$PROBE_DIR/probe.log" >&2
    die 2 "perf is installed but cannot record (see above). As root, or lower the restriction: sudo sysctl kernel.perf_event_paranoid=1. If perf complains about the kernel version, install the linux-perf package matching it."
fi

PATH=$PATH:$HOME/.cargo/bin
if ! command -v inferno-flamegraph >/dev/null 2>&1 || ! command -v inferno-collapse-perf >/dev/null 2>&1; then
    if [ -n "${NO_INSTALL:-}" ]; then
        die 3 "inferno is not installed: run cargo install inferno --locked"
    fi
    log "inferno-flamegraph not found: installing it now with 'cargo install inferno --locked' (one time, a few minutes; bounded to 30 min)"
    timeout 1800 cargo install inferno --locked >&2 ||
        die 3 "cargo install inferno --locked failed; install it by hand and rerun"
fi

# ---- 2. build -------------------------------------------------------------------------------
if [ -z "${SKIP_BUILD:-}" ]; then
    log "building release binaries (cargo build --release --workspace; bounded to ${BUILD_TIMEOUT:-1800}s)"
    (cd "$ROOT" && timeout "${BUILD_TIMEOUT:-1800}" cargo build --release --workspace) ||
        die 1 "cargo build --release --workspace failed or timed out"
fi
[ -x "$SERVER_BIN" ] || die 1 "no server binary at $SERVER_BIN"
[ -x "$LOADGEN" ] || die 1 "no load generator at $LOADGEN (cargo build --release -p corecast-load)"

# ---- 3. plan the window ---------------------------------------------------------------------
# Values the extra args already set win; otherwise DURATION/WARMUP are passed explicitly.
arg_value() { # arg_value FLAG DEFAULT
    local prev='' v=$2
    for a in "${EXTRA[@]}"; do
        [ "$prev" = "$1" ] && v=$a
        prev=$a
    done
    echo "$v"
}
has_arg() { local a; for a in "${EXTRA[@]}"; do [ "$a" = "$1" ] && return 0; done; return 1; }

LOAD_ARGS=()
DURATION=$(arg_value --duration "${DURATION:-10}")
WARMUP=$(arg_value --warmup "${WARMUP:-2}")
has_arg --duration || LOAD_ARGS+=(--duration "$DURATION")
has_arg --warmup || LOAD_ARGS+=(--warmup "$WARMUP")
CONNECT_RATE=$(arg_value --connect-rate 5000)
case $SCENARIO in
echo) CONNS=$(arg_value --conns 100) ;;
broadcast) CONNS=$(( $(arg_value --subscribers 100) + $(arg_value --publishers 1) )) ;;
*) CONNS=0 ;;
esac
if [ "$SCENARIO" = connect ]; then
    # Accepts and handshakes are the point here: sample the whole run.
    PERF_DELAY=${PERF_DELAY:-0}
    PERF_SECONDS=${PERF_SECONDS:-0}
else
    # Skip connection set-up (at --connect-rate) and the warm-up; stop a little before the
    # window ends so the tail of the run is not sampled.
    PERF_DELAY=${PERF_DELAY:-$(python3 -c "import sys; c,r,w=map(float,sys.argv[1:]); print(round(c/r + w + 0.5, 1))" "$CONNS" "$CONNECT_RATE" "$WARMUP")}
    PERF_SECONDS=${PERF_SECONDS:-$(python3 -c "import sys; print(max(1.0, float(sys.argv[1]) - 0.5))" "$DURATION")}
fi

raise_nofile
mkdir -p "$OUT_DIR"
PORT=$(pick_port)

# ---- 4. server ------------------------------------------------------------------------------
start_server "$SERVER_BIN" "$PORT" "$BASE.server.log" || die 1 "server did not start"
log "server pid $SERVER_PID on 127.0.0.1:$PORT, core $SERVER_CORE (${SERVER_FLAGS[*]})"

# Which call-graph mode works here: probe against the idle server before any load runs.
cg_flags() {
    case $1 in
    fp) echo "-g" ;;
    dwarf) echo "--call-graph dwarf,16384" ;;
    none) echo "" ;;
    esac
}
if [ "$CALLGRAPH" = auto ]; then
    CALLGRAPH=none
    for mode in fp dwarf; do
        # shellcheck disable=SC2046
        if timeout 20 perf record -q -e cpu-clock $(cg_flags $mode) -p "$SERVER_PID" \
            -o "$PROBE_DIR/cg.data" -- sleep 0.3 >"$PROBE_DIR/cg.log" 2>&1; then
            CALLGRAPH=$mode
            break
        fi
        log "perf record with call graph mode '$mode' failed: $(tail -n 1 "$PROBE_DIR/cg.log")"
    done
fi
log "call graphs: $CALLGRAPH"

# ---- 5. load + sampling ---------------------------------------------------------------------
LOAD_CMD=("$LOADGEN" "$SCENARIO" --url "ws://127.0.0.1:$PORT" "${LOAD_ARGS[@]}"
    --server-pid "$SERVER_PID" --server-core "$SERVER_CORE" "${EXTRA[@]}")
LOAD_LIMIT=$(load_timeout "${LOAD_ARGS[@]}" "${EXTRA[@]}")
log "load (core $LOAD_CORE, at most ${LOAD_LIMIT}s): ${LOAD_CMD[*]}"
timeout "$LOAD_LIMIT" taskset -c "$LOAD_CORE" "${LOAD_CMD[@]}" >"$BASE.load.txt" 2>&1 &
LOAD_PID=$!

deadline=$(python3 -c "import time,sys; print(time.time() + float(sys.argv[1]))" "$PERF_DELAY")
while kill -0 "$LOAD_PID" 2>/dev/null &&
    python3 -c "import time,sys; sys.exit(0 if time.time() < float(sys.argv[1]) else 1)" "$deadline"; do
    sleep 0.2
done
kill -0 "$LOAD_PID" 2>/dev/null || log "warning: the load generator ended before sampling started (see $BASE.load.txt)"

PERF_LIMIT=$LOAD_LIMIT
if [ "$PERF_SECONDS" != 0 ]; then
    PERF_LIMIT=$(python3 -c "import math,sys; print(math.ceil(float(sys.argv[1])))" "$PERF_SECONDS")
fi
log "sampling server pid $SERVER_PID at ${PERF_FREQ} Hz for $([ "$PERF_SECONDS" = 0 ] && echo "the whole run" || echo "${PERF_SECONDS}s")"
# shellcheck disable=SC2046
timeout -s INT "$PERF_LIMIT" perf record -q -e cpu-clock -F "$PERF_FREQ" $(cg_flags "$CALLGRAPH") \
    -p "$SERVER_PID" -o "$BASE.perf.data" >"$BASE.perf.log" 2>&1 &
PERF_PID=$!

load_rc=0
wait "$LOAD_PID" || load_rc=$?
LOAD_PID=
# perf exits 124 via `timeout`, or non-zero on SIGINT in some versions; the data file decides.
stop_child "$PERF_PID" INT
wait "$PERF_PID" 2>/dev/null || true
PERF_PID=
if [ "$load_rc" -ne 0 ]; then
    log "warning: corecast-load exited with status $load_rc; output:"
    tail -n 20 "$BASE.load.txt" >&2
fi
stop_server

[ -s "$BASE.perf.data" ] || die 1 "perf wrote no data (see $BASE.perf.log)"

# ---- 6. render ------------------------------------------------------------------------------
log "folding stacks (perf script | inferno-collapse-perf)"
timeout 600 perf script -i "$BASE.perf.data" 2>/dev/null | timeout 600 inferno-collapse-perf >"$BASE.folded" ||
    die 1 "folding stacks failed"
[ -s "$BASE.folded" ] || die 1 "no samples were recorded: was the server busy? (see $BASE.load.txt)"
# inferno weights cpu-clock samples by their period (ns), so the total is server CPU time.
CPU_S=$(awk '{ n += $NF } END { printf "%.2f", n / 1e9 }' "$BASE.folded")
TITLE="corecast $SCENARIO ${EXTRA[*]} (${CPU_S}s of server CPU, cpu-clock at ${PERF_FREQ} Hz, callgraph $CALLGRAPH)"
timeout 300 inferno-flamegraph --title "$TITLE" "$BASE.folded" >"$SVG.tmp" || die 1 "inferno-flamegraph failed"
mv "$SVG.tmp" "$SVG"
[ -n "${KEEP_PERF_DATA:-}" ] || rm -f "$BASE.perf.data"
[ -s "$BASE.perf.log" ] || rm -f "$BASE.perf.log"

log "load generator output: $BASE.load.txt; folded stacks: $BASE.folded"
echo "$SVG"
