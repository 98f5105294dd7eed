#!/usr/bin/env bash
# Bounded soak: for MINUTES (default 2) churn connections, publish to subscribers, and keep
# stalled readers attached; then check that the server's memory came back near its baseline
# and that its counters add up.
#   tools/soak.sh [MINUTES]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
MINUTES=${1:-2}
PORT=${PORT:-9500}
ADMIN=${ADMIN:-9501}
cargo build --release --workspace --quiet
LOAD=target/release/corecast-load

target/release/corecast --listen 127.0.0.1:"$PORT" --admin-listen 127.0.0.1:"$ADMIN" --workers 2 \
    --max-outbound-bytes 65536 --slow-consumer drop 2>/tmp/corecast-soak.log &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null || true' EXIT
sleep 0.5
metric() { curl -s "http://127.0.0.1:$ADMIN/metrics" | awk -v m="$1" '$1==m {print $2}'; }
rss() { awk '/VmRSS/ {print $2 * 1024}' /proc/$SERVER/status; }
BASE=$(rss)
echo "baseline RSS $BASE bytes"

# Stalled readers: subscribe, then never read, for the whole soak.
python3 - "$PORT" "$((MINUTES * 60))" <<'PY' &
import base64, os, socket, sys, time
port, secs = int(sys.argv[1]), int(sys.argv[2])
socks = []
for _ in range(20):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(f"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    msg = b'{"op":"subscribe","topic":"bench"}'
    mask = os.urandom(4)
    s.sendall(bytes([0x81, 0x80 | len(msg)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(msg)))
    socks.append(s)
time.sleep(secs)
PY
STALLED=$!

end=$(( $(date +%s) + MINUTES * 60 ))
round=0
lost_total=0
while [ "$(date +%s)" -lt "$end" ]; do
    round=$((round + 1))
    $LOAD --url ws://127.0.0.1:"$PORT" --src-ips 4 connect --conns 3000 --rate 3000 --hold 1 \
        --json >/tmp/soak-connect.json 2>/dev/null &
    C=$!
    $LOAD --url ws://127.0.0.1:"$PORT" --json --duration 8 --warmup 1 broadcast \
        --subscribers 500 --rate 2000 >/tmp/soak-bcast.json 2>/dev/null
    wait $C
    lost=$(python3 -c 'import json; print(json.load(open("/tmp/soak-bcast.json"))["lost"])')
    fails=$(python3 -c 'import json; c=json.load(open("/tmp/soak-connect.json"))["connect"]; print(sum(c["failed"].values()))')
    lost_total=$((lost_total + lost))
    echo "round $round: broadcast lost=$lost, connect failures=$fails, RSS $(rss), open $(metric corecast_connections_open)"
done
kill $STALLED 2>/dev/null || true; wait $STALLED 2>/dev/null || true
sleep 3
END_RSS=$(rss)
open=$(metric corecast_connections_open)
queued=$(metric corecast_outbound_queued_bytes)
dropped=$(metric corecast_slow_consumer_dropped_total)
echo "end: RSS $END_RSS (baseline $BASE), open $open, queued $queued, dropped-and-counted $dropped, lost $lost_total"
fail=0
[ "$open" = "0" ] || { echo "FAIL: connections still open"; fail=1; }
[ "$queued" = "0" ] || { echo "FAIL: bytes still queued"; fail=1; }
[ "$lost_total" = "0" ] || { echo "FAIL: subscribers lost messages"; fail=1; }
awk -v e="$END_RSS" -v b="$BASE" 'BEGIN { exit !(e <= b + 8*1024*1024) }' || { echo "FAIL: RSS did not return near baseline"; fail=1; }
[ "$fail" = 0 ] && echo "soak passed"
exit $fail
