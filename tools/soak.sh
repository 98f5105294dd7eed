#!/usr/bin/env bash
# Bounded soak: for MINUTES (default 2) churn connections, publish to subscribers, and keep
# misbehaving clients attached the whole time (tools/soak_clients.py): stalled readers,
# requesters that never read their replies, and clients that send half a frame and reset.
# Then check that every message was delivered or dropped-and-counted, that nothing is left
# open, queued or buffered, and that the server's memory came back within 16 MiB of its
# baseline.
#   tools/soak.sh [MINUTES]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
MINUTES=${1:-2}
PORT=${PORT:-9500}
ADMIN=${ADMIN:-9501}
cargo build --release --workspace --quiet
LOAD=target/release/corecast-load

target/release/corecast --listen 127.0.0.1:"$PORT" --admin-listen 127.0.0.1:"$ADMIN" --workers 2 \
    --max-outbound-bytes 262144 --slow-consumer drop --backpressure-timeout 3 \
    2>/tmp/corecast-soak.log &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null || true; kill $(jobs -p) 2>/dev/null || true' EXIT
sleep 0.5
metric() { curl -s "http://127.0.0.1:$ADMIN/metrics" | awk -v m="$1" '$1==m {print $2}'; }
rss() { awk '/VmRSS/ {print $2 * 1024}' /proc/$SERVER/status; }
BASE=$(rss)
echo "baseline RSS $BASE bytes"

# The misbehaving clients, for the whole soak.
SECS=$((MINUTES * 60))
python3 tools/soak_clients.py stalled "$PORT" 20 "$SECS" >/tmp/soak-stalled.txt &
STALLED=$!
python3 tools/soak_clients.py requester "$PORT" 4 "$SECS" >/tmp/soak-requester.txt &
REQUESTERS=$!
python3 tools/soak_clients.py resetter "$PORT" 2 "$SECS" >/tmp/soak-resetter.txt &
RESETTERS=$!

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
wait $STALLED $REQUESTERS $RESETTERS 2>/dev/null || true
cat /tmp/soak-stalled.txt /tmp/soak-requester.txt /tmp/soak-resetter.txt
# Closing handshakes and held connections' backpressure timeouts finish, and the allocator
# purges what they freed (within a second).
sleep 6
END_RSS=$(rss)
open=$(metric corecast_connections_open)
queued=$(metric corecast_outbound_queued_bytes)
outmem=$(metric corecast_outbound_memory_bytes)
inmem=$(metric corecast_inbound_memory_bytes)
dropped=$(metric corecast_slow_consumer_dropped_total)
held=$(metric corecast_input_held_total)
bp=$(metric corecast_backpressure_closed_total)
hangups=$(metric corecast_hangups_total)
echo "end: RSS $END_RSS (baseline $BASE), open $open, queued $queued B, outbound memory $outmem B," \
     "inbound memory $inmem B, dropped-and-counted $dropped, input held $held times," \
     "closed for backpressure $bp, hang-ups $hangups, lost $lost_total"
fail=0
[ "$open" = "0" ] || { echo "FAIL: connections still open"; fail=1; }
[ "$queued" = "0" ] || { echo "FAIL: bytes still queued"; fail=1; }
[ "$outmem" = "0" ] && [ "$inmem" = "0" ] || { echo "FAIL: connection memory still held"; fail=1; }
[ "$lost_total" = "0" ] || { echo "FAIL: subscribers lost messages"; fail=1; }
[ "$bp" != "0" ] || { echo "FAIL: no non-reading requester was ever cut off"; fail=1; }
[ "$hangups" != "0" ] || { echo "FAIL: no reset was seen"; fail=1; }
awk -v e="$END_RSS" -v b="$BASE" 'BEGIN { exit !(e <= b + 16*1024*1024) }' || { echo "FAIL: RSS did not return within 16 MiB of baseline"; fail=1; }
[ "$fail" = 0 ] && echo "soak passed"
exit $fail
