# Shared helpers for perf/flamegraph.sh and perf/compare.sh; sourced, not run.
# shellcheck shell=bash

# Cores: the server gets one, the load generator the other. Override for bigger machines.
SERVER_CORE=${SERVER_CORE:-0}
LOAD_CORE=${LOAD_CORE:-1}

log() { printf '%s: %s\n' "${0##*/}" "$*" >&2; }
die() {
    local code=$1
    shift
    log "$*"
    exit "$code"
}

# Both tools open one socket per connection; 10k-connection scenarios need more than 1024.
raise_nofile() {
    local hard
    hard=$(ulimit -Hn)
    if [ "$hard" = unlimited ]; then hard=1048576; fi
    ulimit -Sn "$hard" 2>/dev/null || true
    if [ "$(ulimit -Sn)" -lt 11000 ]; then
        log "note: open-file limit is $(ulimit -Sn); scenarios with ~10k+ connections may fail (raise it with ulimit -n / limits.conf)"
    fi
}

# A free TCP port on 127.0.0.1 (the kernel's choice), or $PORT when the user set one.
pick_port() {
    if [ -n "${PORT:-}" ]; then
        echo "$PORT"
        return
    fi
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null ||
        echo $((20000 + RANDOM % 20000))
}

# Server flags shared by every run. The admin endpoint is switched off (when the binary knows
# the flag) so that runs never collide on its fixed default port; SERVER_ARGS adds more flags.
server_flags() {
    local bin=$1
    SERVER_FLAGS=(--workers 1)
    if timeout 10 "$bin" --help 2>/dev/null | grep -q -- '--admin-listen'; then
        SERVER_FLAGS+=(--admin-listen off)
    fi
    if [ -n "${SERVER_ARGS:-}" ]; then
        # Word splitting is intended: SERVER_ARGS is a flag list.
        # shellcheck disable=SC2206
        SERVER_FLAGS+=($SERVER_ARGS)
    fi
}

# start_server BIN PORT LOGFILE: starts BIN pinned to SERVER_CORE, sets SERVER_PID, and waits
# (at most READY_TIMEOUT s) until the port accepts connections.
start_server() {
    local bin=$1 port=$2 logfile=$3
    server_flags "$bin"
    taskset -c "$SERVER_CORE" "$bin" "${SERVER_FLAGS[@]}" --listen "127.0.0.1:$port" \
        >"$logfile" 2>&1 &
    SERVER_PID=$!
    local deadline=$((SECONDS + ${READY_TIMEOUT:-10}))
    while [ "$SECONDS" -lt "$deadline" ]; do
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            log "server exited during start-up; its log ($logfile):"
            tail -n 20 "$logfile" >&2
            SERVER_PID=
            return 1
        fi
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    log "server did not accept on 127.0.0.1:$port within ${READY_TIMEOUT:-10}s"
    stop_server
    return 1
}

# stop_child PID SIGNAL: signals a child of this script if it still runs, and reaps it.
stop_child() {
    local pid=$1 sig=$2
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill "-$sig" "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
}

# Sends SIGTERM and waits up to STOP_TIMEOUT s (the server drains connections first), then
# SIGKILL. Only ever signals the PID this script started.
stop_server() {
    [ -n "${SERVER_PID:-}" ] || return 0
    if kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        local deadline=$((SECONDS + ${STOP_TIMEOUT:-15}))
        while kill -0 "$SERVER_PID" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do
            sleep 0.1
        done
        if kill -0 "$SERVER_PID" 2>/dev/null; then
            log "server $SERVER_PID ignored SIGTERM for ${STOP_TIMEOUT:-15}s; sending SIGKILL"
            kill -KILL "$SERVER_PID" 2>/dev/null || true
        fi
    fi
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
}

# On exit or interrupt, stops the load generator (LOAD_PID) and the server (SERVER_PID)
# this script started, keeping the script's exit status.
stop_children_on_exit() {
    SERVER_PID=
    LOAD_PID=
    trap _stop_children EXIT
    trap 'exit 130' INT TERM
}
_stop_children() {
    local rc=$?
    trap - EXIT INT TERM
    stop_child "$LOAD_PID" TERM
    stop_server
    exit "$rc"
}

# Upper bound for one load-generator run: its own duration, warm-up and hold, plus set-up,
# grace and teardown slack. Reads --duration/--warmup/--hold from the arguments if given.
load_timeout() {
    local d=10 w=1 h=5 prev=''
    for a in "$@"; do
        case $prev in
        --duration) d=$a ;;
        --warmup) w=$a ;;
        --hold) h=$a ;;
        esac
        prev=$a
    done
    python3 -c "import sys, math; print(math.ceil(sum(map(float, sys.argv[1:])) + 120))" \
        "$d" "$w" "$h" 2>/dev/null || echo 300
}
