#!/usr/bin/env python3
"""Checks a running corecast server with an independent client: the `websockets` package.

    python3 tests/clients/py_client.py [--echo-only] [--ca FILE] [--expect-deflate on|off] ws://127.0.0.1:PORT
    python3 tests/clients/py_client.py --ca FILE wss://127.0.0.1:PORT

Exercises /ws (subscribe, publish, broadcast, echo, error replies, unsubscribe) and /echo
(raw binary and text echo); --echo-only checks /echo alone (for a server that only echoes).
websockets offers permessage-deflate on every connection and, where it is agreed, compresses
every message it sends. --expect-deflate on checks that each connection negotiated it and
adds the compression checks (a 40 KB document and a 1-byte one published across both
workers, and a compression bomb: 16 MiB of zeros in 16 KB, which must be refused with 1009);
--expect-deflate off checks that the server declined the offer.
A wss:// URL is verified against the CA certificates in --ca FILE (default: the file named
by $CORECAST_CA_FILE, else the machine's CA store). Exits 0 when everything matched, 1 with
a message naming the first mismatch or a failed connection, 2 on bad usage or a missing
`websockets` package.
"""

import argparse
import contextlib
import json
import os
import ssl
import sys
import time

try:
    import websockets
    from websockets.sync.client import connect
except ImportError as e:  # the Rust test turns this into an install hint
    print("py_client: the `websockets` package is missing (%s); run tools/install-test-deps.sh" % e,
          file=sys.stderr)
    sys.exit(2)

TIMEOUT = 15.0  # a reply that should come (a watchdog: CI machines can be slow)
QUIET = 0.3     # how long to listen for a message that must not come


class Mismatch(Exception):
    pass


checks = 0
# "on"/"off": what every connection must have negotiated (--expect-deflate); None: unchecked.
expect_deflate = None


def open_ws(url, **kw):
    """connect() with the test's timeout, checking the negotiated extensions when asked."""
    ws = connect(url, open_timeout=TIMEOUT, **kw)
    if expect_deflate is not None:
        names = [e.name for e in ws.protocol.extensions]
        want = ["permessage-deflate"] if expect_deflate == "on" else []
        check(names == want, "%s: extensions %s negotiated, expected %s" % (url, names, want))
    return ws


def check(cond, what):
    global checks
    checks += 1
    if not cond:
        raise Mismatch(what)


def recv_json(ws, who):
    try:
        raw = ws.recv(timeout=TIMEOUT)
    except TimeoutError:
        raise Mismatch("%s: no message within %.0f s" % (who, TIMEOUT))
    check(isinstance(raw, str), "%s: expected a text frame, got binary %r" % (who, raw[:60]))
    try:
        return json.loads(raw)
    except ValueError:
        raise Mismatch("%s: reply is not JSON: %r" % (who, raw[:200]))


def expect_fields(got, want, who):
    """Compares a JSON object with the expected one key by key, then checks for extra keys."""
    check(isinstance(got, dict), "%s: expected a JSON object, got %r" % (who, got))
    for key, value in want.items():
        check(key in got, "%s: field %r missing in %s" % (who, key, json.dumps(got)))
        # type() as well, so that 1 and true, or 1 and 1.0, are not taken for each other
        check(got[key] == value and type(got[key]) is type(value),
              "%s: field %r is %s, expected %s (whole reply %s)"
              % (who, key, json.dumps(got[key]), json.dumps(value), json.dumps(got)))
    extra = sorted(set(got) - set(want))
    check(not extra, "%s: unexpected fields %s in %s" % (who, extra, json.dumps(got)))


def expect_error(got, want_id, who):
    check(isinstance(got, dict), "%s: expected an error object, got %r" % (who, got))
    for key in ("op", "id", "code", "message"):
        check(key in got, "%s: error reply lacks %r: %s" % (who, key, json.dumps(got)))
    check(got["op"] == "error", "%s: op is %r, expected \"error\"" % (who, got["op"]))
    check(got["id"] == want_id and type(got["id"]) is type(want_id),
          "%s: id is %s, expected %s" % (who, json.dumps(got["id"]), json.dumps(want_id)))
    check(got["code"] == "bad_request", "%s: code is %r, expected \"bad_request\"" % (who, got["code"]))
    check(isinstance(got["message"], str) and got["message"] != "",
          "%s: message should be a non-empty string, got %r" % (who, got["message"]))


def expect_silence(ws, who):
    """Nothing may arrive now: an echo round trip proves the connection is idle, then a short
    listen catches anything still in flight from another worker."""
    marker = "quiet-%s-%d" % (who, checks)
    ws.send(json.dumps({"op": "echo", "data": marker}))
    got = recv_json(ws, who)
    expect_fields(got, {"op": "echo", "data": marker}, who + " (expected nothing before this echo)")
    try:
        extra = ws.recv(timeout=QUIET)
    except TimeoutError:
        return
    raise Mismatch("%s: unexpected message %r" % (who, extra[:200]))


def send(ws, obj):
    ws.send(json.dumps(obj))


def parse_args():
    ap = argparse.ArgumentParser(description="Checks a running corecast server with the `websockets` package.")
    ap.add_argument("--echo-only", action="store_true", help="check the raw /echo endpoint only")
    ap.add_argument("--ca", default=os.environ.get("CORECAST_CA_FILE"),
                    help="PEM CA certificates that a wss:// server's certificate must chain to "
                         "(default: $CORECAST_CA_FILE, else the machine's CA store)")
    ap.add_argument("--expect-deflate", choices=["on", "off"],
                    help="check that permessage-deflate was (on) or was not (off) negotiated")
    ap.add_argument("url", help="ws://HOST:PORT or wss://HOST:PORT")
    args = ap.parse_args()
    if not args.url.startswith(("ws://", "wss://")):
        ap.error("the URL must start with ws:// or wss://")
    return args


def main():
    args = parse_args()
    base = args.url.rstrip("/")
    # Over ws:// connect() gets no ssl argument at all, exactly as before wss:// existed.
    tls = {}
    if base.startswith("wss://"):
        tls["ssl"] = ssl.create_default_context(cafile=args.ca)
    started = time.monotonic()
    global expect_deflate
    expect_deflate = args.expect_deflate
    if not args.echo_only:
        check_json_protocol(base, tls)
        check_close_codes(base, tls)
        if expect_deflate == "on":
            check_compression(base, tls)
    check_raw_echo(base, tls)
    print("py_client (websockets %s): %d checks passed in %.2f s"
          % (websockets.__version__, checks, time.monotonic() - started))
    return 0


def check_json_protocol(base, tls):
    n_subs = 3
    with contextlib.ExitStack() as stack:
        everyone = [stack.enter_context(open_ws(base + "/ws", **tls))
                    for _ in range(n_subs + 2)]
        subs = everyone[:n_subs]
        publisher, bystander = everyone[n_subs:]
        # subscribe, with ids of both kinds the protocol allows (number, string)
        for i, ws in enumerate(subs):
            sub_id = i if i % 2 == 0 else "sub-%d" % i
            send(ws, {"op": "subscribe", "topic": "py-news", "id": sub_id})
            expect_fields(recv_json(ws, "subscriber %d" % i), {"op": "ok", "id": sub_id},
                          "subscribe reply %d" % i)
        send(bystander, {"op": "subscribe", "topic": "py-other"})
        expect_fields(recv_json(bystander, "bystander"), {"op": "ok"}, "subscribe reply without id")

        # publish: every subscriber gets it exactly once, the bystander never
        payload = {"seq": 1, "text": "héllo ✓", "list": [1, 2.5, None, True]}
        send(publisher, {"op": "publish", "topic": "py-news", "data": payload, "id": "pub-1"})
        expect_fields(recv_json(publisher, "publisher"), {"op": "ok", "id": "pub-1"}, "publish reply")
        for i, ws in enumerate(subs):
            expect_fields(recv_json(ws, "subscriber %d" % i),
                          {"op": "message", "topic": "py-news", "data": payload},
                          "published message at subscriber %d" % i)
        for i, ws in enumerate(subs):
            expect_silence(ws, "subscriber %d after one publish" % i)
        expect_silence(bystander, "bystander after publish")
        # a publish without id gets no reply at all
        send(publisher, {"op": "publish", "topic": "py-news", "data": 2})
        for i, ws in enumerate(subs):
            expect_fields(recv_json(ws, "subscriber %d" % i),
                          {"op": "message", "topic": "py-news", "data": 2},
                          "second published message at subscriber %d" % i)
        expect_silence(publisher, "publisher after publish without id")

        # broadcast: every /ws connection, the sender included
        send(bystander, {"op": "broadcast", "data": {"all": "hands"}})
        for i, ws in enumerate(everyone):
            expect_fields(recv_json(ws, "connection %d" % i),
                          {"op": "message", "data": {"all": "hands"}}, "broadcast at connection %d" % i)
        for i, ws in enumerate(everyone):
            expect_silence(ws, "connection %d after broadcast" % i)

        # JSON echo, with and without id
        send(publisher, {"op": "echo", "id": 42, "data": {"nested": [1, "two", None]}})
        expect_fields(recv_json(publisher, "echo"),
                      {"op": "echo", "id": 42, "data": {"nested": [1, "two", None]}}, "echo with id")
        send(publisher, {"op": "echo", "data": "no id"})
        expect_fields(recv_json(publisher, "echo"), {"op": "echo", "data": "no id"}, "echo without id")

        # error replies; the connection stays usable after each
        bad = [
            ("{not json", None, "malformed JSON"),
            ("[1,2,3]", None, "non-object JSON"),
            (json.dumps({"op": "fly", "id": 7}), 7, "unknown op"),
            (json.dumps({"op": "subscribe", "id": "s"}), "s", "subscribe without topic"),
            (json.dumps({"op": "publish", "id": 8, "data": 1}), 8, "publish without topic"),
            (json.dumps({"op": "subscribe", "id": 9, "topic": 5}), 9, "topic of the wrong type"),
            (b'{"op":"echo","data":1,"id":3}', None, "binary frame on /ws"),
        ]
        for frame, want_id, what in bad:
            publisher.send(frame)
            expect_error(recv_json(publisher, what), want_id, what)
            send(publisher, {"op": "echo", "id": "after", "data": what})
            expect_fields(recv_json(publisher, "echo after " + what),
                          {"op": "echo", "id": "after", "data": what}, "echo after " + what)

        # unsubscribe: subscriber 0 stops receiving, the others still do
        send(subs[0], {"op": "unsubscribe", "topic": "py-news", "id": "u"})
        expect_fields(recv_json(subs[0], "unsubscribe"), {"op": "ok", "id": "u"}, "unsubscribe reply")
        send(publisher, {"op": "publish", "topic": "py-news", "data": "after unsubscribe"})
        for i, ws in enumerate(subs[1:], start=1):
            expect_fields(recv_json(ws, "subscriber %d" % i),
                          {"op": "message", "topic": "py-news", "data": "after unsubscribe"},
                          "message after unsubscribe at subscriber %d" % i)
        expect_silence(subs[0], "unsubscribed connection")
        # an id that is neither string nor number is itself a bad request
        send(publisher, {"op": "echo", "id": {"n": 1}, "data": 1})
        expect_error(recv_json(publisher, "object id"), None, "object id")


def check_close_codes(base, tls):
    # The client closes with its own code: the server answers with the same one.
    with open_ws(base + "/ws", **tls) as ws:
        ws.close(code=4000, reason="py bye")
        check(ws.protocol.close_rcvd is not None, "close 4000: no close frame came back")
        check(ws.protocol.close_rcvd.code == 4000, "close 4000: answered with %s" % ws.protocol.close_rcvd.code)
    # A message over the server's default --max-message-size (64 KiB): 1009.
    with open_ws(base + "/ws", max_size=None, **tls) as ws:
        ws.send("x" * 70000)
        try:
            got = ws.recv(timeout=TIMEOUT)
            raise Mismatch("70,000-byte message: got %r instead of a close" % got[:100])
        except websockets.exceptions.ConnectionClosed as e:
            check(e.rcvd is not None, "70,000-byte message: no close frame from the server")
            check(e.rcvd.code == 1009, "70,000-byte message: closed with %s, expected 1009"
                  % e.rcvd.code)


def check_compression(base, tls):
    # Three subscribers (the server's workers take connections in turn, so both have some)
    # get a 40 KB document, which the server sends compressed, and a 1-byte one, sent plain.
    with contextlib.ExitStack() as stack:
        subs = [stack.enter_context(open_ws(base + "/ws", **tls)) for _ in range(3)]
        publisher = stack.enter_context(open_ws(base + "/ws", **tls))
        for i, ws in enumerate(subs):
            send(ws, {"op": "subscribe", "topic": "py-zip", "id": i})
            expect_fields(recv_json(ws, "zip subscriber %d" % i), {"op": "ok", "id": i},
                          "zip subscribe reply %d" % i)
        big = {"rows": [{"id": i, "name": "row-%d" % i, "tags": ["a", "b"], "ok": i % 3 == 0}
                        for i in range(800)]}
        check(len(json.dumps(big)) > 40000, "the large document is large")
        for data in (big, "x"):
            send(publisher, {"op": "publish", "topic": "py-zip", "data": data})
            for i, ws in enumerate(subs):
                expect_fields(recv_json(ws, "zip subscriber %d" % i),
                              {"op": "message", "topic": "py-zip", "data": data},
                              "compressed publish (%d bytes) at subscriber %d"
                              % (len(json.dumps(data)), i))
    # A compression bomb: 16 MiB of zeros deflate to about 16 KB, far over the 64 KiB limit
    # once inflated. The server stops inflating at the limit and closes with 1009.
    with open_ws(base + "/ws", max_size=None, **tls) as ws:
        ws.send(b"\0" * (16 << 20), text=False)
        try:
            got = ws.recv(timeout=TIMEOUT)
            raise Mismatch("compression bomb: got %r instead of a close" % got[:100])
        except websockets.exceptions.ConnectionClosed as e:
            check(e.rcvd is not None, "compression bomb: no close frame from the server")
            check(e.rcvd.code == 1009, "compression bomb: closed with %s, expected 1009" % e.rcvd.code)


def check_raw_echo(base, tls):
    # /echo: raw frames come back verbatim with their opcode
    with open_ws(base + "/echo", **tls) as raw:
        blob = bytes(range(256)) * 16
        raw.send(blob)
        got = raw.recv(timeout=TIMEOUT)
        check(isinstance(got, bytes), "/echo: binary frame came back as text")
        check(got == blob, "/echo: binary echo differs (%d bytes back, %d sent)" % (len(got), len(blob)))
        text = "héllo ✓ {not json}"
        raw.send(text)
        got = raw.recv(timeout=TIMEOUT)
        check(isinstance(got, str), "/echo: text frame came back as binary")
        check(got == text, "/echo: text echo differs: %r" % got)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Mismatch as e:
        print("py_client: MISMATCH: %s" % e, file=sys.stderr)
        sys.exit(1)
    except (OSError, websockets.exceptions.WebSocketException) as e:
        print("py_client: connection failed: %r" % e, file=sys.stderr)
        sys.exit(1)
