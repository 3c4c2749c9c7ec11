#!/usr/bin/env python3
"""Bad requests for bench/soak.sh, one connection each, until the deadline:
every one must get a 4xx (or be closed unanswered where that is the documented
answer). Prints one JSON line: how many were sent, answered as expected, and not."""

import json
import socket
import sys
import time

BAD = [
    b"GET / HTTP/1.1\r\nHost: test.local\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: test.local\r\nX-Bad: a\r\n b\r\n\r\n",
    b"GARBAGE\r\n\r\n",
    b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: test.local\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: test.local\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"GET / HTTP/1.1\r\nHost: test.local\r\nContent-Length: +5\r\n\r\nhello",
]


def main():
    port, seconds = int(sys.argv[1]), float(sys.argv[2])
    deadline = time.time() + seconds
    sent = expected = unexpected = 0
    i = 0
    while time.time() < deadline:
        raw = BAD[i % len(BAD)]
        i += 1
        sent += 1
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(raw)
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            s.close()
            status = int(data[9:12]) if data.startswith(b"HTTP/1.1 ") else 0
            if 400 <= status < 500:
                expected += 1
            else:
                unexpected += 1
                print(f"unexpected answer to {raw[:40]!r}: {data[:80]!r}", file=sys.stderr)
        except OSError as e:
            unexpected += 1
            print(f"error on {raw[:40]!r}: {e}", file=sys.stderr)
        time.sleep(0.01)
    print(json.dumps({"bad_sent": sent, "bad_refused_4xx": expected, "bad_unexpected": unexpected}))


if __name__ == "__main__":
    main()
