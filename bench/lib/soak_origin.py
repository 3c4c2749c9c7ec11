#!/usr/bin/env python3
"""The soak test's origin: GET /obj/N serves a deterministic object of a size
that follows from N (Cache-Control: max-age=30, so objects expire and are fetched
again during the run); POST /up answers with the body's length. HTTP/1.1,
keep-alive, one thread per connection."""

import http.server
import sys


def size_of(n: int) -> int:
    return (512, 4096, 32768, 262144)[n % 4] + n


def body(n: int) -> bytes:
    pattern = bytes((n * 31 + i) % 251 for i in range(251))
    size = size_of(n)
    return (pattern * (size // 251 + 1))[:size]


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        try:
            n = int(path.rsplit("/", 1)[1])
        except (IndexError, ValueError):
            n = 0
        b = body(n)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Cache-Control", "max-age=30")
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        got = 0
        while got < n:
            chunk = self.rfile.read(min(65536, n - got))
            if not chunk:
                break
            got += len(chunk)
        text = f"POST {got}".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        self.wfile.write(text)


if __name__ == "__main__":
    port = int(sys.argv[1])
    http.server.ThreadingHTTPServer.daemon_threads = True
    http.server.ThreadingHTTPServer.request_queue_size = 1024
    http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
