#!/usr/bin/env python3
"""Demo upstream for tools/demo.sh: the "protected API" behind Envoy.

Answers every method with a small JSON body echoing the method, the path and
the length of the request body it read, e.g.
    {"method": "POST", "path": "/api/login", "content_length": 31}
except /api/reports/*, a buggy endpoint that answers 500 with the database
error it hit (the response-side leak the analysis node should report).

Usage: demo_upstream.py [--listen 127.0.0.1:8080]
Prints "listening on ADDR" on stderr once it accepts connections.
"""

import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DB_ERROR = (
    "<html><body><h1>Report failed</h1><p>You have an error in your SQL syntax; check the"
    " manual that corresponds to your MySQL server version for the right syntax to use near"
    " ''' at line 1</p></body></html>"
)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "oob-mirror-demo-upstream"
    # Headers and body go out in two writes; without this, Nagle's algorithm and
    # the peer's delayed ACK add ~40 ms to every answer.
    disable_nagle_algorithm = True

    def _read_body(self):
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            body = b""
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    # Trailers (if any) end with an empty line.
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return body
                body += self.rfile.read(size)
                self.rfile.readline()  # CRLF after each chunk
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _answer(self):
        body = self._read_body()
        if self.path.startswith("/api/reports/"):
            out = DB_ERROR.encode()
            self.send_response(500)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)
            return
        out = json.dumps(
            {"method": self.command, "path": self.path, "content_length": len(body)}
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = _answer

    def log_message(self, format, *args):  # noqa: A002 (signature of the base class)
        sys.stderr.write("upstream: %s\n" % (format % args))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:8080", help="HOST:PORT")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    server = ThreadingHTTPServer((host or "127.0.0.1", int(port)), Handler)
    server.daemon_threads = True
    addr = server.server_address
    sys.stderr.write("listening on %s:%d\n" % (addr[0], addr[1]))
    sys.stderr.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
