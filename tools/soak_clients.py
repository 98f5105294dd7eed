#!/usr/bin/env python3
"""Misbehaving clients for tools/soak.sh, each running for SECONDS and then exiting:

  stalled    N subscribers to "bench" that never read (slow consumers)
  requester  N clients that send echo requests and never read the replies; the server holds
             their input back and closes them after --backpressure-timeout, and they
             reconnect and start again
  resetter   N loops of: upgrade, send half a frame, reset the connection (RST)

Prints one line with what it did when it ends.

  soak_clients.py MODE PORT N SECONDS
"""
import base64
import os
import socket
import struct
import sys
import threading
import time


def masked(opcode, payload):
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, 0x80 | n])
    elif n < 65536:
        head = bytes([0x80 | opcode, 0x80 | 126]) + struct.pack("!H", n)
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + struct.pack("!Q", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def upgraded(port, rcvbuf=None):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        (
            f"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        b = s.recv(1)
        if not b:
            raise ConnectionError("closed during the upgrade")
        head += b
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(head.split(b"\r\n")[0].decode(errors="replace"))
    return s


def stalled(port, n, secs, counts):
    socks = []
    for _ in range(n):
        s = upgraded(port, rcvbuf=4096)
        s.sendall(masked(1, b'{"op":"subscribe","topic":"bench"}'))
        socks.append(s)
    counts["subscribed"] = len(socks)
    time.sleep(secs)


def requester(port, secs, counts, lock):
    frame = masked(1, b'{"op":"echo","id":"%s","data":[1,2,3]}' % (b"x" * 200))
    batch = frame * 200
    end = time.time() + secs
    while time.time() < end:
        try:
            s = upgraded(port, rcvbuf=4096)
        except OSError:
            time.sleep(0.2)
            continue
        with lock:
            counts["connections"] = counts.get("connections", 0) + 1
        s.settimeout(0.5)
        try:
            while time.time() < end:
                try:
                    s.send(batch)
                except socket.timeout:
                    pass  # held back by the server: TCP stopped us
        except OSError:
            with lock:
                counts["cut_off"] = counts.get("cut_off", 0) + 1
        s.close()


def resetter(port, secs, counts, lock):
    half = masked(1, b'{"op":"echo","data":"' + b"h" * 300 + b'"}')[:120]
    end = time.time() + secs
    while time.time() < end:
        try:
            s = upgraded(port)
        except OSError:
            time.sleep(0.05)
            continue
        s.sendall(half)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
        with lock:
            counts["resets"] = counts.get("resets", 0) + 1


def main():
    mode, port, n, secs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    counts, lock = {}, threading.Lock()
    if mode == "stalled":
        stalled(port, n, secs, counts)
    else:
        target = {"requester": requester, "resetter": resetter}[mode]
        threads = [
            threading.Thread(target=target, args=(port, secs, counts, lock)) for _ in range(n)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    print(mode, " ".join(f"{k}={v}" for k, v in sorted(counts.items())), flush=True)


if __name__ == "__main__":
    main()
