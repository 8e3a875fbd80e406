"""colo_orch.daemon.api under fuzzing, on a real server: whatever a client sends on any
listener, the server answers with an HTTP response or closes, and it still serves the next
client (colo_orch/core/api.py's parser has its own properties)."""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from colo_orch.core.api import REASONS, Listener
from colo_orch.core.config import parse
from colo_orch.daemon.api import ApiServer, Handlers
from tests.support.api import CONFIG, Addr, connect, read_all, request
from tests.support.strategies import http_heads

TOKEN = b"0123456789abcdef-the-token"
commands: list[str] = []


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    cfg = parse(CONFIG)
    cfg = dataclasses.replace(
        cfg, api_listen="127.0.0.1:0", metrics_listen="127.0.0.1:0",
        api_socket=str(tmp_path_factory.mktemp("api") / "api.sock"),
        timing=dataclasses.replace(cfg.timing, api_timeout=2.0))
    handlers = Handlers(status=lambda: {"state": "PROTECTED"},
                        command=lambda name: commands.append(name) or {"accepted": name, "id": 1},
                        metrics=lambda: b"colo_up 1\n")
    s = ApiServer(cfg, handlers, TOKEN).start()
    yield s
    s.stop()


def _send(addr: Addr, data: bytes) -> bytes:
    """Send `data`, end our side (so that an incomplete head is not left to the timeout),
    and read what the server says until it closes."""
    with connect(addr, timeout=5.0) as s:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except OSError:  # the server refused and closed while we were still sending
            pass
        return read_all(s)


# A connection per example: at most 2,000 of them under the fuzz profile (about a minute).
@settings(max_examples=min(settings.default.max_examples, 2000))
@given(st.sampled_from(list(Listener)), http_heads() | st.binary(max_size=200))
def test_any_request_is_answered_or_closed_and_the_server_lives_on(
        server: ApiServer, listener: Listener, data: bytes) -> None:
    addr = server.address(listener)
    ran = len(commands)
    answer = _send(addr if isinstance(addr, str) else addr[:2], data)
    if answer:
        line = answer.split(b"\r\n", 1)[0].split(b" ")
        assert line[0] == b"HTTP/1.1" and int(line[1]) in REASONS, answer[:80]
    if listener is not Listener.SOCKET:  # there a root peer may (the tests may run as root)
        assert len(commands) == ran, "a command ran without the token"
    status, body = request(server.address(Listener.READ_ONLY)[:2], "GET", "/healthz")
    assert status == 200, body
