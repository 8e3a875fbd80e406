"""colo_orch.daemon.api on loopback: the listeners, the token, and clients that are slow,
greedy or too big, against an in-process orchestrator stand-in (its status and commands
are plain functions; tests/system/orch/test_api.py runs the real colo-orch)."""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from colo_lab.wait import wait_until
from colo_orch.core.api import MAX_HEAD_BYTES, Listener
from colo_orch.core.commands import CommandRefused
from colo_orch.core.config import parse
from colo_orch.daemon.api import ApiError, ApiServer, Handlers, read_token
from tests.support.api import CONFIG, connect, exchange, request, slowloris

TOKEN = b"0123456789abcdef-the-token"
TIMEOUT = 1.0


class Orch:
    """What the API asks of the orchestrator, recorded."""

    def __init__(self) -> None:
        self.commands: list[str] = []
        self.refusals: list[str] = []
        self.state = "PROTECTED"
        self.refuse = ""  # the reason to refuse every command with, when set

    def handlers(self) -> Handlers:
        return Handlers(status=lambda: {"state": self.state, "name": "web"},
                        command=self._command, metrics=lambda: b"colo_up 1\n",
                        refused=self.refusals.append)

    def _command(self, name: str) -> dict[str, Any]:
        if self.refuse:
            raise CommandRefused(self.refuse)
        self.commands.append(name)
        return {"accepted": f"{name} requested", "id": len(self.commands)}


def _server(tmp_path: Path, orch: Orch, **kw: Any) -> ApiServer:
    cfg = parse(CONFIG)
    cfg = dataclasses.replace(
        cfg, api_listen="127.0.0.1:0", metrics_listen="127.0.0.1:0",
        api_socket=str(tmp_path / "api.sock"),
        timing=dataclasses.replace(cfg.timing, api_timeout=TIMEOUT))
    return ApiServer(cfg, orch.handlers(), TOKEN, **kw).start()


@pytest.fixture
def orch() -> Orch:
    return Orch()


@pytest.fixture
def server(tmp_path: Path, orch: Orch) -> Iterator[ApiServer]:
    s = _server(tmp_path, orch)
    yield s
    s.stop()


def _addrs(s: ApiServer) -> tuple[Any, Any, str]:
    return (s.address(Listener.COMMANDS), s.address(Listener.READ_ONLY),
            s.address(Listener.SOCKET))


def test_commands_need_the_token_and_reads_do_not(server: ApiServer, orch: Orch) -> None:
    api, metrics, _ = _addrs(server)
    assert request(api, "POST", "/failover")[0] == 401
    assert request(api, "POST", "/failover", b"0123456789abcdef-the-tokeX")[0] == 401
    assert orch.commands == []
    assert orch.refusals == ["unauthorized", "unauthorized"]
    assert request(api, "POST", "/failover", TOKEN) == (
        202, {"accepted": "failover requested", "id": 1, "state": "PROTECTED"})
    assert orch.commands == ["failover"]
    assert request(api, "GET", "/state") == (200, {"state": "PROTECTED", "name": "web"})
    assert request(metrics, "GET", "/metrics") == (200, "colo_up 1\n")
    assert request(metrics, "GET", "/healthz") == (200, {"ok": True})
    orch.state = "WAITING"
    assert request(metrics, "GET", "/readyz") == (503, {"ready": False, "state": "WAITING"})


def test_the_metrics_listener_refuses_commands_even_with_the_token(server: ApiServer,
                                                                   orch: Orch) -> None:
    _, metrics, _ = _addrs(server)
    for cmd in ("failover", "pause", "checkpoint"):
        status, body = request(metrics, "POST", f"/{cmd}", TOKEN)
        assert status == 405 and "read-only" in body["error"]
    assert orch.commands == []


def test_the_socket_lets_root_command_without_a_token(server: ApiServer, orch: Orch) -> None:
    _, _, sock = _addrs(server)
    assert os.stat(sock).st_mode & 0o777 == 0o666
    status, body = request(sock, "POST", "/pause")
    if os.geteuid() == 0:
        assert status == 202 and orch.commands == ["pause"]
    else:
        assert status == 403 and f"uid {os.geteuid()} may not" in body["error"]
        assert orch.commands == []
    assert request(sock, "POST", "/resume", TOKEN)[0] == 202


def test_a_slow_client_is_cut_off_and_blocks_nobody(server: ApiServer, orch: Orch) -> None:
    api, metrics, _ = _addrs(server)

    def serve() -> None:
        assert request(api, "GET", "/state")[0] == 200
        assert request(metrics, "GET", "/metrics")[0] == 200
        assert request(api, "POST", "/checkpoint", TOKEN)[0] == 202

    # More trickling clients than worker threads, on both listeners.
    served, cut = slowloris([api, metrics], 5, serve, TIMEOUT)
    print(f"others served in {served:.3f} s; slow clients cut off after {cut:.3f} s")
    assert cut >= TIMEOUT * 0.9
    assert orch.refusals.count("timeout") == 10 and orch.commands == ["checkpoint"] * 3


def test_an_oversized_request_is_refused_and_nothing_runs(server: ApiServer,
                                                          orch: Orch) -> None:
    api, _, _ = _addrs(server)
    auth = b"Authorization: Bearer " + TOKEN + b"\r\n"
    head = b"POST /failover HTTP/1.1\r\n" + auth + b"X-Pad: " + b"a" * (4 * MAX_HEAD_BYTES)
    assert exchange(api, head + b"\r\n\r\n")[0] == 431
    assert exchange(api, b"POST /failover HTTP/1.1\r\n" + auth +
                    b"Content-Length: 100000000\r\n\r\n")[0] == 413
    assert orch.commands == [] and orch.refusals == ["too_large", "too_large"]


def test_connections_beyond_the_bound_are_turned_away(tmp_path: Path, orch: Orch) -> None:
    server = _server(tmp_path, orch, max_connections=4)
    try:
        api, _, _ = _addrs(server)
        idle = [connect(api) for _ in range(4)]
        # 503, or a reset when the request arrived before the server closed unread.
        wait_until(lambda: exchange(api, b"GET /state HTTP/1.1\r\n\r\n")[0] in (0, 503), 2,
                   "the fifth connection turned away")
        assert "busy" in orch.refusals
        for s in idle:
            s.close()
        wait_until(lambda: request(api, "GET", "/state")[0] == 200, 5 * TIMEOUT,
                   "served again once the idle connections are gone")
    finally:
        server.stop()


def test_a_live_socket_is_never_taken_over_a_stale_one_is(tmp_path: Path, orch: Orch,
                                                         server: ApiServer) -> None:
    with pytest.raises(ApiError, match="another process listens there"):
        _server(tmp_path, orch)
    # The refused one left the live socket in place.
    assert request(str(tmp_path / "api.sock"), "GET", "/state")[0] == 200
    server.stop()
    assert not (tmp_path / "api.sock").exists()
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(tmp_path / "api.sock"))  # bound, never listening: a dead daemon's
    stale.close()
    again = _server(tmp_path, orch)
    try:
        assert request(str(tmp_path / "api.sock"), "GET", "/state")[0] == 200
    finally:
        again.stop()


def test_a_token_file_others_can_read_is_refused_naming_the_key_and_the_fix(
        tmp_path: Path) -> None:
    f = tmp_path / "api.token"
    f.write_bytes(TOKEN + b"\n")
    f.chmod(0o640)
    with pytest.raises(ApiError, match=rf"api_token_file {f}: mode 0640 lets others read the "
                                       rf"token; chmod 600 {f}"):
        read_token(str(f))
    f.chmod(0o600)
    assert read_token(str(f)) == TOKEN
    f.write_bytes(b"short\n")
    with pytest.raises(ApiError, match=r"shorter than 16.*head -c 32 /dev/urandom"):
        read_token(str(f))


def test_a_command_that_does_not_apply_is_refused_with_409_and_its_reason(
        server: ApiServer, orch: Orch) -> None:
    api, _, _ = _addrs(server)
    orch.refuse = "pause applies to a protected primary; this host is the secondary in PROTECTED"
    assert request(api, "POST", "/pause", TOKEN) == (409, {"error": orch.refuse,
                                                           "state": "PROTECTED"})
    assert orch.commands == [] and orch.refusals == ["not_applicable"]
