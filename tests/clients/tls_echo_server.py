#!/usr/bin/env python3
"""A TLS WebSocket server written by others (the `websockets` package behind Python's ssl
module), to test TLS clients against until corecast itself speaks TLS.

    python3 tests/clients/tls_echo_server.py --cert CERT.pem --key KEY.pem
        [--port 0] [--max-tls 1.2] [--lifetime SECONDS] [--exit-on-stdin-eof]

Offers TLS 1.2 and 1.3 (only 1.2 with --max-tls 1.2) and ALPN http/1.1, as corecast will.
Every path echoes each message back with its opcode, except /ws, which answers the part of
corecast's JSON protocol that corecast-load uses: echo, subscribe, publish (to every
subscriber of the topic, `data` re-encoded compactly), each with the request's id.

Prints `listening PORT` on stdout once it accepts connections. It stops on SIGTERM or
SIGINT, at the end of its standard input with --exit-on-stdin-eof (so a test that dies takes
it along), or after --lifetime seconds (default 300) whatever happens, and then prints one
JSON line: connections (completed WebSocket handshakes), messages received, the source
addresses seen, and a count per negotiated "version cipher alpn".
Exit status 0 after a stop, 2 on bad usage or a missing `websockets` package.
"""

import argparse
import asyncio
import collections
import json
import signal
import ssl
import sys
import threading

try:
    from websockets.asyncio.server import serve
    from websockets.exceptions import ConnectionClosed
except ImportError as e:
    print("tls_echo_server: the `websockets` package is missing (%s); run tools/install-test-deps.sh" % e,
          file=sys.stderr)
    sys.exit(2)

# Autobahn's 9.* cases send messages of up to 16 MiB; anything larger is refused.
MAX_MESSAGE = 32 * 1024 * 1024


class Seen:
    def __init__(self):
        self.connections = 0
        self.messages = 0
        self.peers = set()
        self.tls = collections.Counter()

    def summary(self):
        return {
            "connections": self.connections,
            "messages": self.messages,
            "peers": sorted(self.peers),
            "tls": dict(sorted(self.tls.items())),
        }


seen = Seen()
topics = collections.defaultdict(set)


def note_connection(ws):
    seen.connections += 1
    peer = ws.remote_address
    if peer:
        seen.peers.add(peer[0])
    tls = ws.transport.get_extra_info("ssl_object")
    if tls is not None:
        seen.tls["%s %s %s" % (tls.version(), tls.cipher()[0], tls.selected_alpn_protocol())] += 1


def reply(request, obj):
    if "id" in request:
        obj["id"] = request["id"]
    return json.dumps(obj, separators=(",", ":"))


async def json_protocol(ws):
    subscribed = set()
    try:
        async for raw in ws:
            seen.messages += 1
            try:
                request = json.loads(raw)
                op = request["op"]
            except (ValueError, TypeError, KeyError):
                await ws.send(json.dumps({"op": "error", "id": None, "code": "bad_request",
                                          "message": "not a request this stand-in knows"}))
                continue
            if op == "echo":
                await ws.send(reply(request, {"op": "echo", "data": request.get("data")}))
            elif op == "subscribe":
                topics[request["topic"]].add(ws)
                subscribed.add(request["topic"])
                await ws.send(reply(request, {"op": "ok"}))
            elif op == "publish":
                message = json.dumps({"op": "message", "topic": request["topic"],
                                      "data": request.get("data")}, separators=(",", ":"))
                for sub in list(topics.get(request["topic"], ())):
                    try:
                        await sub.send(message)
                    except ConnectionClosed:
                        pass
                if "id" in request:
                    await ws.send(reply(request, {"op": "ok"}))
            else:
                await ws.send(reply(request, {"op": "error", "code": "bad_request",
                                              "message": "op %r is not in this stand-in" % op}))
    finally:
        for topic in subscribed:
            topics[topic].discard(ws)


async def echo(ws):
    async for message in ws:
        seen.messages += 1
        await ws.send(message)


async def handler(ws):
    note_connection(ws)
    try:
        if ws.request.path.split("?")[0] == "/ws":
            await json_protocol(ws)
        else:
            await echo(ws)
    except ConnectionClosed:
        pass


def tls_context(args):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if args.max_tls == "1.2":
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


async def main(args):
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.exit_on_stdin_eof:
        def watch_stdin():
            while sys.stdin.buffer.read(4096):
                pass
            loop.call_soon_threadsafe(stop.set)
        threading.Thread(target=watch_stdin, daemon=True).start()
    loop.call_later(args.lifetime, stop.set)

    # No permessage-deflate and no keepalive pings, as corecast: the clients under test see
    # only what they send echoed.
    server = await serve(handler, "127.0.0.1", args.port, ssl=tls_context(args),
                         compression=None, ping_interval=None, max_size=MAX_MESSAGE,
                         close_timeout=2)
    port = server.sockets[0].getsockname()[1]
    print("listening %d" % port, flush=True)
    await stop.wait()
    server.close()
    try:
        await asyncio.wait_for(server.wait_closed(), 5)
    except asyncio.TimeoutError:
        pass
    print(json.dumps(seen.summary()), flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cert", required=True, help="PEM certificate chain, leaf first")
    ap.add_argument("--key", required=True, help="PEM private key")
    ap.add_argument("--port", type=int, default=0, help="default 0: a free port")
    ap.add_argument("--max-tls", choices=["1.2", "1.3"], default="1.3")
    ap.add_argument("--lifetime", type=float, default=300.0, help="stop after this many seconds")
    ap.add_argument("--exit-on-stdin-eof", action="store_true")
    asyncio.run(main(ap.parse_args()))
