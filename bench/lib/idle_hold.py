#!/usr/bin/env python3
"""Hold many idle HTTP/1.1 keep-alive connections open against one proxy.

Used by bench/compare.sh for the idle-connections scenario. Each connection
sends one GET (a cache hit), reads the whole response and then stays open and
idle, the way browsers and mobile clients park connections between requests.
A proxy has to keep that connection's state for as long as the client keeps it.

    idle_hold.py HOST PORT PATH COUNT STATUS_FILE

Writes to STATUS_FILE:
    ready OPENED FAILED SECONDS   once every connection has been tried
    alive N                       after each SIGUSR1: connections still open
SIGTERM or SIGINT closes everything and exits 0. Standard library only.
"""

import resource
import signal
import socket
import sys
import time

OPEN_DEADLINE_S = 90       # give up opening after this long (a proxy that stalls)
MAX_CONSECUTIVE_FAILS = 50  # or after this many failures in a row
IO_TIMEOUT_S = 5


def raise_nofile(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, need)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def read_response(sock):
    """Read one response with a Content-Length body; False if the server closes."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            return False
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    length = None
    keep = True
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        value = value.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection" and value == b"close":
            keep = False
    if length is None:
        return False  # not expected from a cache hit of a static object
    remaining = length - len(body)
    while remaining > 0:
        chunk = sock.recv(min(remaining, 65536))
        if not chunk:
            return False
        remaining -= len(chunk)
    return keep


def alive(socks):
    n = 0
    for s in socks:
        try:
            data = s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            if data:
                n += 1  # unexpected bytes, but the connection is open
        except BlockingIOError:
            n += 1
        except OSError:
            pass
    return n


def write_status(path, line):
    with open(path, "a", encoding="ascii") as f:
        f.write(line + "\n")


def main():
    host, port, path, count, status = sys.argv[1:6]
    port, count = int(port), int(count)
    raise_nofile(count + 64)
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "User-Agent: cairn-bench-idle\r\n\r\n"
    ).encode()

    stop = False

    def on_term(_sig, _frame):
        nonlocal stop
        stop = True

    check = False

    def on_usr1(_sig, _frame):
        nonlocal check
        check = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGUSR1, on_usr1)

    socks, failed, fails_in_row = [], 0, 0
    t0 = time.monotonic()
    for _ in range(count):
        if stop or time.monotonic() - t0 > OPEN_DEADLINE_S:
            break
        if fails_in_row >= MAX_CONSECUTIVE_FAILS:
            break
        s = None
        try:
            s = socket.create_connection((host, port), timeout=IO_TIMEOUT_S)
            s.sendall(request)
            if not read_response(s):
                raise OSError("response without keep-alive")
            s.settimeout(None)
            socks.append(s)
            fails_in_row = 0
        except OSError:
            failed += 1
            fails_in_row += 1
            if s is not None:
                s.close()
    write_status(status, f"ready {len(socks)} {failed} {time.monotonic() - t0:.1f}")

    while not stop:
        time.sleep(0.1)
        if check:
            check = False
            write_status(status, f"alive {alive(socks)}")
    for s in socks:
        s.close()


if __name__ == "__main__":
    main()
