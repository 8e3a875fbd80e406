"""`coloctl status` says who holds the lease and why the arbiter cannot answer."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest

from colo_orch.cli.ctl import main

STATE: dict[str, Any] = {
    "name": "web", "host": "h1", "state": "HOLDING", "role": "primary",
    "vm": {"reachable": True, "status": "running", "migration": "none", "colo_mode": "none"},
    "peer": None, "peer_seen_s_ago": None, "checkpoints": {}, "failovers": 0,
    "reprotections": 0, "degraded_reason": "", "lease_holder": "h2",
    "lease_reachable": True, "lease_error": "leader key now held by h2",
}


@pytest.fixture
def api() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(STATE).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_status_names_the_holder_and_the_reason(api: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--url", api, "status"]) == 0
    assert "  lease: held by h2 (leader key now held by h2)\n" in capsys.readouterr().out
