#!/usr/bin/env python3
"""Checks corecast's token auth with an independent client: the `websockets` package.

    python3 tests/clients/py_auth_client.py < plan.json

tests/auth.rs starts the servers, mints the tokens (PyJWT and jose) and hands this script a
plan on stdin:

    {"url": "ws://127.0.0.1:P",            # auth on, --auth-query-token
     "url_no_query": "ws://127.0.0.1:Q",   # auth on, no --auth-query-token
     "good": [{"what": "PyJWT HS256", "sub": "alice", "exp": UNIX, "token": T}, ...],
     "refresh": {"same": T, "same_exp": UNIX, "other": T},  # for good[0]'s user; other: another user
     "bad": [{"what": "jose alg none", "reason": "malformed token", "token": T}, ...],
     "grant": {"subscribe": TOPIC, "publish": TOPIC, "denied": TOPIC}}

Each good token arrives every way a token can: the Authorization header, a connect message,
and the query (accepted with --auth-query-token, 401 without); each connection then
subscribes and publishes within its grant and outside it. good[0]'s connection also
refreshes with another user's token (refused) and its own (renewed), and /echo is tried
without a token and with one. Each bad token is refused with 401 in the header and with close
4001 in a connect message, its class as the reason. Every reply is checked field by field.

Prints what the server should have counted as one JSON line last ({"main": {...},
"no_query": {...}}), for the test to compare with /metrics. Exits 0 when everything matched,
1 with a message naming the first mismatch, 2 on a missing `websockets` package.
"""

import json
import sys
import time
import urllib.parse

try:
    import websockets
    from websockets.exceptions import ConnectionClosed, InvalidStatus
    from websockets.sync.client import connect
except ImportError as e:  # the Rust test turns this into an install hint
    print("py_auth_client: the `websockets` package is missing (%s); run tools/install-test-deps.sh" % e,
          file=sys.stderr)
    sys.exit(2)

TIMEOUT = 15.0  # a reply that should come (a watchdog: CI machines can be slow)


class Mismatch(Exception):
    pass


checks = 0
# What the server should count, per server: closes by reason and refusals by reason.
counts = {"main": {"upgrade_refused": 0, "connect_refused": 0, "refusals": {}},
          "no_query": {"upgrade_refused": 0}}


def check(cond, what):
    global checks
    checks += 1
    if not cond:
        raise Mismatch(what)


def refused(reason):
    r = counts["main"]["refusals"]
    r[reason] = r.get(reason, 0) + 1


def open_ws(url, token=None):
    headers = {"Authorization": "Bearer " + token} if token is not None else None
    return connect(url, open_timeout=TIMEOUT, additional_headers=headers, max_size=None)


def recv_json(ws, who):
    try:
        raw = ws.recv(timeout=TIMEOUT)
    except TimeoutError:
        raise Mismatch("%s: no message within %.0f s" % (who, TIMEOUT))
    except ConnectionClosed as e:
        raise Mismatch("%s: connection closed (%s)" % (who, e))
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
        check(got[key] == value and type(got[key]) is type(value),
              "%s: field %r is %s, expected %s (whole reply %s)"
              % (who, key, json.dumps(got[key]), json.dumps(value), json.dumps(got)))
    extra = sorted(set(got) - set(want))
    check(not extra, "%s: unexpected fields %s in %s" % (who, extra, json.dumps(got)))


def expect_error(got, want_id, code, who):
    check(isinstance(got, dict) and got.get("op") == "error",
          "%s: expected an error reply, got %s" % (who, json.dumps(got)))
    check(set(got) == {"op", "id", "code", "message"}, "%s: error fields %s" % (who, sorted(got)))
    check(got["id"] == want_id, "%s: id %s, expected %s" % (who, json.dumps(got["id"]), json.dumps(want_id)))
    check(got["code"] == code, "%s: code %r, expected %r (%s)" % (who, got["code"], code, got["message"]))
    check(isinstance(got["message"], str) and got["message"],
          "%s: message should be a non-empty string" % who)


def request(ws, obj, who):
    ws.send(json.dumps(obj))
    return recv_json(ws, who)


def expect_expires_in(got, want_id, exp, who, user=None):
    """`{"op":"ok","id":..,["user":..,]"expires_in":N}` with N what is left of `exp`."""
    want = {"op": "ok", "id": want_id}
    if user is not None:
        want["user"] = user
    check(isinstance(got.get("expires_in"), int), "%s: expires_in missing or not an integer: %s"
          % (who, json.dumps(got)))
    left = exp - time.time()
    check(left - 2 <= got["expires_in"] <= left + 1,
          "%s: expires_in %s, but the token has %.1f s left" % (who, got["expires_in"], left))
    want["expires_in"] = got["expires_in"]
    expect_fields(got, want, who)


def expect_http_refusal(url, token, status, challenge, who):
    """The upgrade is refused with `status` and a `WWW-Authenticate` that contains `challenge`;
    neither the response's head nor its body holds the token."""
    try:
        ws = open_ws(url, token)
    except InvalidStatus as e:
        resp = e.response
        check(resp.status_code == status, "%s: HTTP %s, expected %s" % (who, resp.status_code, status))
        got = resp.headers.get("WWW-Authenticate", "")
        check(challenge in got, "%s: WWW-Authenticate %r lacks %r" % (who, got, challenge))
        if token is not None:
            body = (resp.body or b"").decode("utf-8", "replace")
            secret_part = token.rsplit(".", 1)[-1] or token
            check(secret_part not in body and secret_part not in str(resp.headers),
                  "%s: the response repeats the token" % who)
        return
    ws.close()
    raise Mismatch("%s: the upgrade was accepted, expected HTTP %s" % (who, status))


def expect_close(ws, code, reason, who):
    try:
        got = ws.recv(timeout=TIMEOUT)
        raise Mismatch("%s: got %r instead of a close" % (who, got[:200]))
    except TimeoutError:
        raise Mismatch("%s: still open after %.0f s" % (who, TIMEOUT))
    except ConnectionClosed as e:
        check(e.rcvd is not None, "%s: no close frame from the server" % who)
        check(e.rcvd.code == code and e.rcvd.reason == reason,
              "%s: closed with %s %r, expected %s %r" % (who, e.rcvd.code, e.rcvd.reason, code, reason))


def use_grant(ws, grant, who):
    """Within the grant: subscribe and publish (and get the message back); outside: forbidden."""
    expect_fields(request(ws, {"op": "subscribe", "topic": grant["subscribe"], "id": 1}, who + " subscribe"),
                  {"op": "ok", "id": 1}, who + " subscribe within the grant")
    data = {"from": who}
    ws.send(json.dumps({"op": "publish", "topic": grant["publish"], "data": data, "id": 2}))
    # The publisher's ok and its own message (it subscribed) may come in either order.
    got = sorted((recv_json(ws, who + " publish"), recv_json(ws, who + " publish")),
                 key=lambda m: m.get("op"))
    expect_fields(got[0], {"op": "message", "topic": grant["publish"], "data": data},
                  who + " own message")
    expect_fields(got[1], {"op": "ok", "id": 2}, who + " publish within the grant")
    expect_error(request(ws, {"op": "subscribe", "topic": grant["denied"], "id": 3}, who),
                 3, "forbidden", who + " subscribe outside the grant")
    refused("subscribe")
    expect_error(request(ws, {"op": "publish", "topic": grant["denied"], "data": 1, "id": 4}, who),
                 4, "forbidden", who + " publish outside the grant")
    refused("publish")
    expect_fields(request(ws, {"op": "echo", "id": "e", "data": who}, who),
                  {"op": "echo", "id": "e", "data": who}, who + " echo after the refusals")


def check_good(plan, g):
    url, what, token = plan["url"], g["what"], g["token"]
    grant = plan["grant"]
    # 1. In the Authorization header: connected from the upgrade on; a connect message on top
    #    (a token both in the header and in a connect message) is a second connect.
    who = "%s in the header" % what
    with open_ws(url + "/ws", token) as ws:
        use_grant(ws, grant, who)
        expect_error(request(ws, {"op": "connect", "token": token, "id": 5}, who), 5, "forbidden",
                     who + ", then in a connect message")
        refused("second_connect")
    # 2. In a connect message: nothing but connect before it.
    who = "%s in a connect message" % what
    with open_ws(url + "/ws") as ws:
        expect_error(request(ws, {"op": "publish", "topic": grant["publish"], "data": 0, "id": 1}, who),
                     1, "unauthorized", who + ": a publish before connect")
        refused("not_connected")
        got = request(ws, {"op": "connect", "token": token, "id": 2}, who)
        expect_expires_in(got, 2, g["exp"], who + ": connect reply", user=g["sub"])
        use_grant(ws, grant, who)
        expect_error(request(ws, {"op": "connect", "token": token, "id": 9}, who), 9, "forbidden",
                     who + ": a second connect")
        refused("second_connect")
    # 3. In the query: with --auth-query-token as good as the header; without, refused.
    who = "%s in the query" % what
    query = "/ws?token=" + urllib.parse.quote(token, safe="")
    with connect(url + query, open_timeout=TIMEOUT) as ws:
        use_grant(ws, grant, who)
    expect_http_refusal(plan["url_no_query"] + query, None, 400, 'error="invalid_request"',
                        who + " without --auth-query-token")
    counts["no_query"]["upgrade_refused"] += 1


def check_refresh(plan, g):
    who = "%s refresh" % g["what"]
    with open_ws(plan["url"] + "/ws") as ws:
        expect_expires_in(request(ws, {"op": "connect", "token": g["token"], "id": 1}, who), 1,
                          g["exp"], who + ": connect", user=g["sub"])
        expect_error(request(ws, {"op": "refresh", "token": plan["refresh"]["other"], "id": 2}, who),
                     2, "forbidden", who + " with another user's token")
        refused("refresh_other_user")
        expect_expires_in(request(ws, {"op": "refresh", "token": plan["refresh"]["same"], "id": 3}, who),
                          3, plan["refresh"]["same_exp"], who + " with the same user's new token")
        expect_fields(request(ws, {"op": "echo", "data": 1}, who), {"op": "echo", "data": 1},
                      who + ": echo after the refresh")


def check_raw_echo(plan, g):
    who = "/echo"
    expect_http_refusal(plan["url"] + "/echo", None, 401, "Bearer", who + " without a token")
    counts["main"]["upgrade_refused"] += 1
    blob = bytes(range(256))
    with open_ws(plan["url"] + "/echo", g["token"]) as ws:
        ws.send(blob)
        check(ws.recv(timeout=TIMEOUT) == blob, who + " with a token in the header: echo differs")
    query = "/echo?token=" + urllib.parse.quote(g["token"], safe="")
    with connect(plan["url"] + query, open_timeout=TIMEOUT) as ws:
        ws.send("txt")
        check(ws.recv(timeout=TIMEOUT) == "txt", who + " with a token in the query: echo differs")


def check_bad(plan, b):
    who = "%s (%s)" % (b["what"], b["reason"])
    challenge = 'Bearer error="invalid_token", error_description="%s"' % b["reason"]
    expect_http_refusal(plan["url"] + "/ws", b["token"], 401, challenge, who + " in the header")
    counts["main"]["upgrade_refused"] += 1
    with open_ws(plan["url"] + "/ws") as ws:
        ws.send(json.dumps({"op": "connect", "token": b["token"], "id": 1}))
        expect_close(ws, 4001, b["reason"], who + " in a connect message")
    counts["main"]["connect_refused"] += 1


def main():
    plan = json.load(sys.stdin)
    started = time.monotonic()
    for g in plan["good"]:
        check_good(plan, g)
    check_refresh(plan, plan["good"][0])
    check_raw_echo(plan, plan["good"][0])
    for b in plan["bad"]:
        check_bad(plan, b)
    print("py_auth_client (websockets %s): %d checks passed in %.2f s"
          % (websockets.__version__, checks, time.monotonic() - started))
    print(json.dumps(counts))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Mismatch as e:
        print("py_auth_client: MISMATCH: %s" % e, file=sys.stderr)
        sys.exit(1)
    except (OSError, websockets.exceptions.WebSocketException) as e:
        print("py_auth_client: failed: %s: %s" % (type(e).__name__, e), file=sys.stderr)
        sys.exit(1)
