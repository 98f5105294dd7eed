#!/usr/bin/env bash
# The identity issue's figures in one run: what auth costs, server on one core.
#
#   perf/auth.sh [all|echo|connect|storm|rss]...          (default: all four, in that order)
#   PAIRS=2 RUNS=1 DURATION=2 WARMUP=1 CONNS=2000 STORM=2000 RSS_CONNS=2000 perf/auth.sh
#                                                         (a quick check that it all works)
#
# echo     (a) msg/s with auth off against on (HS256 tokens in the Authorization header, the
#              grant {"subscribe":["chat.*","user.{sub}","feed.>"],"publish":["chat.*"]}):
#              raw echo, JSON echo and JSON publish (each connection publishes to chat.load-I,
#              to which it is subscribed), `echo --conns 100 --depth 16 --size 32`; PAIRS
#              pairs, order alternating, the median of the per-pair ratios on/off.
# connect  (b) `connect --conns CONNS --rate CONNECT_RATE --src-ips 4`: no auth, HS256, ES256
#              (header): connections/s, server core busy and server core time per connection
#              over the connect phase; RUNS runs each, interleaved, medians.
# storm    (c) `storm --conns STORM --rate CONNECT_RATE --src-ips 4 --probe json`: ES256
#              tokens against no auth: time until all are back, connections/s and the
#              probe's echo p50/p99/max before and during; RUNS pairs, alternating, medians.
# rss      (d) idle RSS per connection, `--src-ips 4 connect --conns RSS_CONNS --rate 5000
#              --hold 3`: unauthenticated, HS256 tokens (distinct subs, the three-pattern
#              grant), and HS256 with --auth-token-cache 0 (the cache's share); RUNS each.
#
# Every run is against a freshly started server (`--workers 1`, pinned to core SERVER_CORE=0;
# the load on LOAD_CORE=1; perf/common.sh), so every token is new to it and costs a signature
# check, as after a restart. Keys and tokens are made by tools/mint-tokens.py (PyJWT).
# Writes to OUT (default a new /tmp/corecast-auth.XXXXXX, printed): summary.txt (also on
# stdout), setup.txt (command, commit, machine, date), runs.tsv and raw/ (every run's JSON,
# stderr and server log). Nothing else should run on the machine meanwhile.
#
# Environment: PAIRS=5 RUNS=3 DURATION=10 WARMUP=2 CONNS=10000 STORM=19500 RSS_CONNS=10000
# CONNECT_RATE=50000 SETTLE=2 OUT, SERVER/LOADGEN (default: build and use target/release/*;
# NO_BUILD=1 skips the build), SERVER_CORE, LOAD_CORE.
set -euo pipefail

usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; }
PARTS=()
for p in "${@:-all}"; do
    case $p in
    all) PARTS+=(echo connect storm rss) ;;
    echo | connect | storm | rss) PARTS+=("$p") ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; exit 1 ;;
    esac
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=perf/common.sh
. "$ROOT/perf/common.sh"

PAIRS=${PAIRS:-5}
RUNS=${RUNS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-10000}
STORM=${STORM:-19500}
RSS_CONNS=${RSS_CONNS:-10000}
CONNECT_RATE=${CONNECT_RATE:-50000}
SETTLE=${SETTLE:-2}
for v in PAIRS RUNS CONNS STORM RSS_CONNS; do
    case ${!v} in '' | *[!0-9]* | 0) die 1 "$v must be a positive integer, not '${!v}'" ;; esac
done

python3 -c 'import jwt, cryptography' 2>/dev/null ||
    die 1 "tools/mint-tokens.py needs PyJWT and cryptography: pip install --user -r tests/clients/requirements.txt"
if [ -z "${SERVER:-}${LOADGEN:-}" ] && [ "${NO_BUILD:-0}" != 1 ]; then
    log "building (cargo build --release --workspace)"
    (cd "$ROOT" && cargo build --release --workspace --quiet)
fi
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
SERVER=${SERVER:-$TARGET/release/corecast}
LOADGEN=${LOADGEN:-$TARGET/release/corecast-load}
for b in "$SERVER" "$LOADGEN"; do
    [ -x "$b" ] || die 1 "not an executable: $b"
done

OUT=${OUT:-$(mktemp -d /tmp/corecast-auth.XXXXXX)}
mkdir -p "$OUT/raw" "$OUT/keys"
# The binaries may be rebuilt while this runs; every run uses these copies.
cp "$SERVER" "$OUT/corecast"
cp "$LOADGEN" "$OUT/corecast-load"
: >"$OUT/runs.tsv"

stop_children_on_exit
raise_nofile

{
    echo "command: perf/auth.sh $*"
    echo "parts: ${PARTS[*]}"
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet 2>/dev/null || echo ' (with uncommitted changes)')"
    echo "machine: $(uname -srm), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ //')"
    echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "settings: PAIRS=$PAIRS RUNS=$RUNS DURATION=$DURATION WARMUP=$WARMUP CONNS=$CONNS STORM=$STORM RSS_CONNS=$RSS_CONNS CONNECT_RATE=$CONNECT_RATE SETTLE=$SETTLE"
    echo "server: $SERVER --workers 1 on core $SERVER_CORE; load: $LOADGEN on core $LOAD_CORE"
    echo "open-file limit: $(ulimit -Sn)"
} >"$OUT/setup.txt"
log "output in $OUT"

# Keys and tokens, once for the whole run. The probe of a storm is connection STORM, so it
# has a line of its own; every connection has a distinct sub.
KEYS=$OUT/keys
MINT=$ROOT/tools/mint-tokens.py
NEED=$((STORM > CONNS ? STORM : CONNS))
NEED=$((NEED > RSS_CONNS ? NEED : RSS_CONNS))
NEED=$((NEED + 1))
"$MINT" --alg HS256 --key "$KEYS/hs256.secret" --new-key --count "$NEED" --exp-in 86400 \
    --out "$KEYS/hs256.tokens"
"$MINT" --alg ES256 --key "$KEYS/es256.pem" --new-key --public-key "$KEYS/es256.pub.pem" \
    --count "$NEED" --exp-in 86400 --out "$KEYS/es256.tokens"

# The server's auth flags, and the load generator's token flags, of each variant.
auth_flags() {
    case $1 in
    off) echo "" ;;
    hs256) echo "--auth-hmac-secret-file $KEYS/hs256.secret" ;;
    hs256-nocache) echo "--auth-hmac-secret-file $KEYS/hs256.secret --auth-token-cache 0" ;;
    es256) echo "--auth-public-key $KEYS/es256.pub.pem" ;;
    esac
}
token_flags() {
    case $1 in
    off) echo "" ;;
    hs256 | hs256-nocache) echo "--tokens $KEYS/hs256.tokens" ;;
    es256) echo "--tokens $KEYS/es256.tokens" ;;
    esac
}

# one_run PART WORKLOAD VARIANT I SCENARIO [corecast-load args]: one run against a fresh
# server; the JSON goes to raw/PART-WORKLOAD-VARIANT-I.json and a line to runs.tsv.
one_run() {
    local part=$1 workload=$2 variant=$3 i=$4
    shift 4
    local name=$part-$workload-$variant-$i port limit rc=0
    local -a tokens
    read -r -a tokens <<<"$(token_flags "$variant")"
    port=$(pick_port)
    SERVER_ARGS=$(auth_flags "$variant") start_server "$OUT/corecast" "$port" "$OUT/raw/$name.server.log" ||
        die 1 "server did not start (log: $OUT/raw/$name.server.log)"
    limit=$(load_timeout "$@")
    timeout "$limit" taskset -c "$LOAD_CORE" "$OUT/corecast-load" --url "ws://127.0.0.1:$port" \
        --server-pid "$SERVER_PID" --server-core "$SERVER_CORE" --json "${tokens[@]}" "$@" \
        >"$OUT/raw/$name.json" 2>"$OUT/raw/$name.err" &
    LOAD_PID=$!
    wait "$LOAD_PID" || rc=$?
    LOAD_PID=
    stop_server
    [ "$rc" -eq 0 ] || log "$name: corecast-load exited with $rc ($(tail -n 1 "$OUT/raw/$name.err"))"
    printf '%s\t%s\t%s\t%s\t%s\n' "$part" "$workload" "$variant" "$i" "raw/$name.json" >>"$OUT/runs.tsv"
    log "$name done"
    sleep "$SETTLE"
}

# pairs PART WORKLOAD COUNT A B SCENARIO-ARGS...: COUNT pairs of A and B, the order
# alternating so that a slow drift weighs on both alike.
pairs() {
    local part=$1 workload=$2 count=$3 a=$4 b=$5
    shift 5
    for i in $(seq 1 "$count"); do
        if [ $((i % 2)) = 1 ]; then
            one_run "$part" "$workload" "$a" "$i" "$@"
            one_run "$part" "$workload" "$b" "$i" "$@"
        else
            one_run "$part" "$workload" "$b" "$i" "$@"
            one_run "$part" "$workload" "$a" "$i" "$@"
        fi
    done
}

# rounds PART WORKLOAD COUNT "VARIANTS" SCENARIO-ARGS...: COUNT rounds of every variant, the
# order rotating by one each round.
rounds() {
    local part=$1 workload=$2 count=$3
    local -a variants
    read -r -a variants <<<"$4"
    shift 4
    local n=${#variants[@]}
    for i in $(seq 1 "$count"); do
        for k in $(seq 0 $((n - 1))); do
            one_run "$part" "$workload" "${variants[$(((i - 1 + k) % n))]}" "$i" "$@"
        done
    done
}

WINDOW=(--duration "$DURATION" --warmup "$WARMUP")
ECHO=(--conns 100 --depth 16 --size 32)
for part in "${PARTS[@]}"; do
    case $part in
    echo)
        for mode in raw json publish; do
            pairs echo "$mode" "$PAIRS" off hs256 "${WINDOW[@]}" echo --mode "$mode" "${ECHO[@]}"
        done
        ;;
    connect)
        rounds connect conns "$RUNS" "off hs256 es256" --src-ips 4 connect --conns "$CONNS" \
            --rate "$CONNECT_RATE" --hold 1
        ;;
    storm)
        pairs storm probe "$RUNS" off es256 --src-ips 4 --warmup "$WARMUP" storm \
            --conns "$STORM" --rate "$CONNECT_RATE" --probe json --hold 1
        ;;
    rss)
        rounds rss idle "$RUNS" "off hs256 hs256-nocache" --src-ips 4 connect \
            --conns "$RSS_CONNS" --rate 5000 --hold 3
        ;;
    esac
done

python3 - "$OUT" <<'PY' | tee "$OUT/summary.txt"
import json, os, statistics, sys

out = sys.argv[1]
runs = {}
for line in open(os.path.join(out, "runs.tsv")):
    part, workload, variant, i, path = line.rstrip("\n").split("\t")
    try:
        with open(os.path.join(out, path)) as f:
            r = json.load(f)
    except (OSError, ValueError):
        r = None
    runs.setdefault((part, workload), {}).setdefault(variant, {})[int(i)] = r

def get(r, dotted):
    for k in dotted.split("."):
        r = r.get(k) if isinstance(r, dict) else None
    return r

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None

def fmt(v, unit="", nd=0):
    if v is None:
        return "-"
    return f"{v:,.{nd}f}{unit}"

def saturated(busy, loadgen):
    if busy is None or loadgen is None:
        return "unknown"
    s, l = busy >= 90, loadgen >= 90
    return {(True, False): "server core", (False, True): "load generator",
            (True, True): "both"}.get((s, l), "neither")

def column(vs, key):
    return [get(r, key) for r in vs.values() if r]

def side(vs, metric, busy_key="server_core_busy_pct", load_key="loadgen_cpu_pct"):
    xs = column(vs, metric)
    busy, load = med(column(vs, busy_key)), med(column(vs, load_key))
    spread = ""
    good = [x for x in xs if x is not None]
    if len(good) > 1:
        spread = f" ({min(good):,.0f}-{max(good):,.0f})"
    return med(xs), spread, busy, load

def failures(vs):
    bad = [i for i, r in vs.items() if r is None]
    fails = sum(sum((get(r, "connect.failed") or {}).values()) for r in vs.values() if r)
    # Error replies (a denied publish, a request before the connect) are counted as replies
    # in messages_per_sec: a run with any is not a figure.
    errors = sum(get(r, "server_errors") or 0 for r in vs.values() if r)
    notes = []
    if bad:
        notes.append(f"runs without a result: {bad}")
    if fails:
        notes.append(f"{fails} failed connections over the runs (see raw/)")
    if errors:
        notes.append(f"{errors} error or unexpected replies over the runs (see raw/)")
    return notes

print(open(os.path.join(out, "setup.txt")).read().rstrip())
print()

if ("echo", "raw") in runs:
    print("(a) msg/s per server core, auth off against on (HS256 tokens in the header): "
          "`echo --conns 100 --depth 16 --size 32`, pairs alternating")
    print(f"{'workload':<10} {'off msg/s':>16} {'on msg/s':>16} {'on/off pairs (median)':>24}  core busy off/on  loadgen off/on  saturated")
    for mode in ("raw", "json", "publish"):
        vs = runs.get(("echo", mode))
        if not vs:
            continue
        off, on = vs.get("off", {}), vs.get("hs256", {})
        ratios = [get(on[i], "messages_per_sec") / get(off[i], "messages_per_sec")
                  for i in sorted(off) if off.get(i) and on.get(i)
                  and get(off[i], "messages_per_sec") and get(on[i], "messages_per_sec")]
        mo, so, bo, lo = side(off, "messages_per_sec")
        mn, sn, bn, ln = side(on, "messages_per_sec")
        r = f"{statistics.median(ratios):.3f}" if ratios else "-"
        print(f"{mode:<10} {fmt(mo):>16} {fmt(mn):>16} {r:>24}  {fmt(bo, '%', 1)}/{fmt(bn, '%', 1)}"
              f"  {fmt(lo, '%')}/{fmt(ln, '%')}  {saturated(bo, lo)}/{saturated(bn, ln)}")
        print(f"{'':<10} {so:>16} {sn:>16}   pairs: {' '.join(f'{x:.3f}' for x in ratios)}")
        for n in failures(off) + failures(on):
            print(f"  note: {n}")
    print()

if ("connect", "conns") in runs:
    vs = runs[("connect", "conns")]
    c = next((r for v in vs.values() for r in v.values() if r), None)
    if c is None:
        print("(b) connect rate: no run gave a result (see raw/)")
        vs = {}
    else:
        print(f"(b) connect rate: `connect --conns {c['conns']} --rate {c['params']['rate']:.0f}`, "
              "the connect phase (first attempt to the last connected), medians")
    print(f"{'tokens':<8} {'conns/s':>10} {'phase s':>8} {'core busy':>10} {'core us/conn':>13} {'loadgen':>8}  saturated  connect p99 us")
    for variant in ("off", "hs256", "es256"):
        v = vs.get(variant, {})
        if not v:
            continue
        rate, spread, busy, load = side(v, "connect_phase.conns_per_sec",
                                        "connect_phase.server_core_busy_pct",
                                        "connect_phase.loadgen_cpu_pct")
        us = med(column(v, "connect_phase.server_core_us_per_conn"))
        secs = med(column(v, "connect_phase.seconds"))
        p99 = med(column(v, "connect.latency_us.p99"))
        print(f"{variant:<8} {fmt(rate):>10} {fmt(secs, '', 3):>8} {fmt(busy, '%', 1):>10} {fmt(us, '', 1):>13}"
              f" {fmt(load, '%'):>8}  {saturated(busy, load):<10} {fmt(p99)}   runs: {spread.strip()}")
        for n in failures(v):
            print(f"  note: {n}")
    print()

if ("storm", "probe") in runs:
    vs = runs[("storm", "probe")]
    c = next((r for v in vs.values() for r in v.values() if r), None)
    if c is None:
        print("(c) reconnect storm: no run gave a result (see raw/)")
        vs = {}
    else:
        print(f"(c) reconnect storm: `storm --conns {c['conns']} --rate {c['params']['rate']:.0f} "
              f"--src-ips {c['params']['src_ips']} --probe json`, ES256 tokens against none, medians")
    print(f"{'tokens':<8} {'all back s':>10} {'conns/s':>9} {'probe p50/p99/max before us':>28} {'probe p50/p99/max during us':>28} {'core busy':>10} {'loadgen':>8}  saturated")
    for variant in ("off", "es256"):
        v = vs.get(variant, {})
        if not v:
            continue
        back = med(column(v, "storm.time_to_all_connected_s"))
        rate, _, busy, load = side(v, "storm.conns_per_sec")
        def lat(phase):
            return "/".join(fmt(med(column(v, f"storm.probe.{phase}.{q}"))) for q in ("p50", "p99", "max"))
        all_back = column(v, "storm.all_connected")
        print(f"{variant:<8} {fmt(back, '', 3):>10} {fmt(rate):>9} {lat('before_us'):>28} {lat('during_us'):>28}"
              f" {fmt(busy, '%', 1):>10} {fmt(load, '%'):>8}  {saturated(busy, load)}")
        if not all(all_back):
            print(f"  note: not all connected in {all_back.count(False)} run(s)")
        for n in failures(v):
            print(f"  note: {n}")
    print()

if ("rss", "idle") in runs:
    vs = runs[("rss", "idle")]
    c = next((r for v in vs.values() for r in v.values() if r), None)
    if c is None:
        print("(d) idle RSS: no run gave a result (see raw/)")
        vs = {}
    else:
        print(f"(d) idle RSS per connection at {c['conns']:,} connections "
              "(`--src-ips 4 connect --rate 5000 --hold 3`), medians")
    names = {"off": "unauthenticated", "hs256": "HS256, 3-pattern grant",
             "hs256-nocache": "same, --auth-token-cache 0"}
    for variant in ("off", "hs256", "hs256-nocache"):
        v = vs.get(variant, {})
        if not v:
            continue
        xs = [x for x in column(v, "rss_per_conn_bytes") if x is not None]
        print(f"{names[variant]:<28} {fmt(med(xs), ' B'):>10}   runs: {' '.join(f'{x:.0f}' for x in xs)}")
        for n in failures(v):
            print(f"  note: {n}")
    print()
print("A figure counts only where the server core was the saturated side (core busy >= 90%,")
print("load generator below); raw data, stderr and server logs are in raw/.")
PY
log "summary: $OUT/summary.txt"
