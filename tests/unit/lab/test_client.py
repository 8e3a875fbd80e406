"""colo_lab.client --verify: every acknowledged key read back, a missing one named."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from colo_lab import client


class _KV(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # one persistent connection, as the guest service
    store: ClassVar[dict[str, bytes]] = {}

    def do_GET(self) -> None:
        value = self.store.get(self.path.removeprefix("/kv/"))
        body = value if value is not None else b"no such key\n"
        self.send_response(200 if value is not None else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[int]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _KV)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def test_verify_names_the_lost_keys(server: int) -> None:
    _KV.store = {f"p{i}": client.value_of(i) for i in (0, 1, 3)}
    _KV.store["p3"] = b"other"
    out = client.verify("127.0.0.1", "p", [0, 1, 2, 3], 5.0, port=server)
    assert out["verified"] == 2
    assert [(x["i"], x["status"]) for x in out["lost"]] == [(2, 404), (3, 200)]
