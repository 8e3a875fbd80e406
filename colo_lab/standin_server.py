"""The stand-in VM's service: the lab guest's HTTP/1.1 keep-alive endpoints, in Python.

Deterministic endpoints give the same response bytes on every replica (no Date or Server
header); GET /random differs on purpose (to cause divergence). Same paths as the guest's
busybox service (colo_lab/guestfs/service.sh), so tests run against either.
"""

from __future__ import annotations

import argparse
import socket
import socketserver
import tempfile
import uuid
from http.server import BaseHTTPRequestHandler
from typing import BinaryIO, ClassVar

from colo_lab.guest import pattern

PATTERN = pattern()  # the guest's /blob pattern; beyond 1 MiB the stand-in repeats it
MAX_BLOB = 64 << 20


_BLOB: BinaryIO | None = None


def _blob_file() -> BinaryIO:
    global _BLOB
    if _BLOB is None:
        f = tempfile.TemporaryFile()
        for _ in range(MAX_BLOB // len(PATTERN)):
            f.write(PATTERN)
        f.flush()
        _BLOB = f
    _BLOB.seek(0)
    return _BLOB


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body are two writes: with Nagle on, the body waits for the client's
    # delayed ACK (40 ms) and latency figures would measure that, not the network.
    disable_nagle_algorithm = True
    kv: ClassVar[dict[str, bytes]] = {}

    def send_response(self, code: int, message: str | None = None) -> None:
        # No Date and no Server header: those would make replicas differ.
        self.send_response_only(code, message)

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _reply(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def do_GET(self) -> None:
        path = self.path
        if path == "/":
            self._reply(200, b"colo lab service\n")
        elif path == "/health":
            self._reply(200, b"ok\n")
        elif path.startswith("/blob/") and path[6:].isdigit() and int(path[6:]) <= MAX_BLOB:
            n = int(path[6:])
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(n))
            self.end_headers()
            if n <= len(PATTERN):
                self.wfile.write(PATTERN[:n])
            else:
                # Bulk (benchmarks): sendfile from a file of the repeated pattern, so the
                # kernel copies and the stream is the same whatever the partial writes.
                self.connection.sendfile(_blob_file(), 0, n)
        elif path.startswith("/kv/") and path[4:] in self.kv:
            self._reply(200, self.kv[path[4:]])
        elif path == "/random":
            self._reply(200, f"{uuid.uuid4()}\n".encode())
        else:
            self._reply(404, b"not found\n")

    def do_POST(self) -> None:
        body = self._body()
        if self.path == "/echo":
            self._reply(200, body)
        else:
            self._reply(404, b"not found\n")

    def do_PUT(self) -> None:
        body = self._body()
        if self.path.startswith("/kv/") and "/" not in self.path[4:]:
            self.kv[self.path[4:]] = body
            self._reply(200, f"stored {len(body)}\n".encode())
        else:
            self._reply(400, b"bad key\n")


class Server(socketserver.ThreadingTCPServer):
    """Listens on `::`, dual-stack: IPv4 clients arrive v4-mapped, IPv6 ones as they are."""

    address_family = socket.AF_INET6
    allow_reuse_address = True
    daemon_threads = True
    # The default backlog of 5 drops SYNs under 20 concurrent connects, at different
    # moments on each replica: a timing divergence the tests do not mean to cause.
    request_queue_size = 128

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=80)
    args = ap.parse_args()
    _blob_file()  # at start: built lazily, the first bulk reply would lag on one replica only
    with Server(("::", args.port), Handler) as srv:
        print("standin: service ready", flush=True)
        srv.serve_forever()


if __name__ == "__main__":
    main()
