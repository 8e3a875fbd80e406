"""colo_proxy.service.control_socket: who may command the proxy, who may only ask.

The real ControlServer, PrimaryProxy and loop in a child process (tests/support/
proxy_child.py); the clients are other processes, as the orchestrator and other local
users are. The user checks with a real other uid are in tests/system/proxy/
test_control_users.py (they need root)."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from colo_lab.wait import wait_until
from colo_proxy.service import control_socket as control
from colo_proxy.wire.control import encode
from tests.support.packets import ACK, CLIENT_ISN, PSH, SVM_ISN, tcp
from tests.support.proxy_child import DEADLINE, ControlClient, ProxyChild


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[ProxyChild]:
    p = ProxyChild(tmp_path)
    yield p
    p.stop()


def test_the_command_socket_is_roots_and_the_status_socket_everyones(
        proxy: ProxyChild) -> None:
    assert stat.S_IMODE(os.stat(proxy.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(proxy.status_path).st_mode) == 0o666


def test_a_user_not_allowed_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    """SO_PEERCRED, not only the mode: here the proxy allows a uid that is not ours."""
    other = os.geteuid() + 1
    proxy = ProxyChild(tmp_path, allowed_uids={other})
    try:
        proxy.hold_one()
        reply = control.request(proxy.path, {"type": "checkpoint_done"})
        assert reply["type"] == "error", reply
        assert f"uid {os.geteuid()} may not use {proxy.path}" in reply["error"]
        assert proxy.status_path in reply["error"]  # where to ask instead
        assert proxy.still_held()
        # Not even hello: the connection is closed after the error line.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(DEADLINE)
            s.connect(proxy.path)
            lines = s.makefile("rb")
            assert b'"error"' in lines.readline()
            assert lines.readline() == b""
    finally:
        proxy.stop()


def test_one_process_commands_at_a_time_until_it_dies(proxy: ProxyChild) -> None:
    proxy.hold_one()
    first = ControlClient(proxy.path)
    second = ControlClient(proxy.path)
    try:
        assert first.ask({"type": "hello"})["type"] == "hello"
        assert second.ask({"type": "hello"})["type"] == "hello"  # hello and status: anyone
        assert second.ask({"type": "bogus"})["type"] == "error"  # takes nothing either
        assert first.ask({"type": "checkpoint_started"}) == {"v": 1, "type": "ok",
                                                             "for": "checkpoint_started"}
        refused = second.ask({"type": "checkpoint_done"})
        assert refused["type"] == "error", refused
        assert f"pid {first.proc.pid} commands this proxy" in refused["error"]
        assert proxy.still_held()
        assert second.ask({"type": "status"})["type"] == "status"  # still connected
        # The holder's own second connection (the orchestrator's libxl bridge) may.
        assert first.ask({"type": "checkpoint_started"})["type"] == "ok"
        # The holder dies (a restarted orchestrator): the next command is taken at once,
        # no waiting for a timeout.
        first.kill()
        assert second.ask({"type": "checkpoint_done"})["type"] == "ok"
        assert proxy.wait_accepted(2) == [1, 2]
    finally:
        first.kill()
        second.kill()


def test_the_holders_connections_are_one_process(proxy: ProxyChild) -> None:
    """One-shot requests of one process in turn, and a second connection of the holder:
    the orchestrator's link and its libxl bridge, or a test's successive requests."""
    proxy.hold_one()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as held:
        held.settimeout(DEADLINE)
        held.connect(proxy.path)
        held.sendall(encode({"type": "checkpoint_started"}))
        assert b'"ok"' in held.makefile("rb").readline()
        assert control.request(proxy.path, {"type": "checkpoint_done"})["type"] == "ok"
    assert proxy.wait_accepted(2) == [1, 2]
    other = ControlClient(proxy.path)
    try:  # our connections are closed: another process takes over
        assert other.ask({"type": "pause"})["type"] == "ok"
        assert control.request(proxy.path, {"type": "resume"})["type"] == "error"
    finally:
        other.kill()


def test_the_status_socket_answers_status_and_nothing_else(proxy: ProxyChild) -> None:
    proxy.hold_one()
    reader = ControlClient(proxy.status_path)
    try:
        assert reader.ask({"type": "hello"})["role"] == "primary"
        assert reader.ask({"type": "status"})["held_packets"] == 1
        for msg in ({"type": "checkpoint_done"}, {"type": "failover"}, {"type": "pause"},
                    {"type": "status", "offsets": True}):
            reply = reader.ask(msg)
            assert reply["type"] == "error", (msg, reply)
            assert f"commands go to {proxy.path}" in reply["error"]
        assert proxy.still_held()
        # A divergence: the command socket's clients hear the checkpoint request, a
        # status reader does not (its next line is the answer to its next question).
        orch = ControlClient(proxy.path)
        try:
            assert orch.ask({"type": "hello"})["type"] == "hello"
            proxy.send("svm", 2, tcp(SVM_ISN + 1, CLIENT_ISN + 1, ACK | PSH, b"jello"))
            wait_until(lambda: sum(proxy.status()["checkpoint_requests"].values()) >= 1, DEADLINE,
                       "the checkpoint request", every=0.01)
            assert reader.ask({"type": "hello"})["type"] == "hello"
        finally:
            orch.kill()
    finally:
        reader.kill()


def test_a_status_reader_that_does_not_read_is_dropped(proxy: ProxyChild) -> None:
    """Its replies never wait: the loop serves the data path, not a slow reader."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(DEADLINE)
        s.connect(proxy.status_path)
        try:
            s.sendall(encode({"type": "status"}) * 20_000)
        except (BrokenPipeError, ConnectionResetError):
            pass  # dropped while we were still writing
        lines = 0
        while chunk := s.recv(65536):  # bounded by DEADLINE: EOF means it was dropped
            lines += chunk.count(b"\n")
    assert 0 < lines < 20_000
    proxy.hold_one()  # the loop still serves
    assert control.request(proxy.path, {"type": "checkpoint_done"})["type"] == "ok"
    assert proxy.wait_accepted(2) == [1, 2]


def test_status_replies_are_rate_limited(tmp_path: Path) -> None:
    now = [100.0]
    srv = control.ControlServer(tmp_path / "p.sock", clock=lambda: now[0])
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(srv.status_path))
            c = srv.accept(read_only=True)
            assert c is not None
            status = {"type": "status"}
            assert all(srv.check(c, status) is None for _ in range(control.STATUS_RATE))
            busy = srv.check(c, status)
            assert busy is not None and busy.startswith("busy")
            now[0] += 0.5
            assert srv.check(c, status) is not None  # the same second
            now[0] += 0.6
            assert srv.check(c, status) is None
    finally:
        srv.close()


def test_status_connections_are_bounded(proxy: ProxyChild) -> None:
    socks = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
             for _ in range(control.STATUS_CLIENTS + 1)]
    try:
        for s in socks:
            s.settimeout(DEADLINE)
            s.connect(proxy.status_path)
        # The last one is closed unanswered, the others are served.
        assert socks[-1].recv(4096) == b""
        socks[0].sendall(encode({"type": "hello"}))
        assert b'"hello"' in socks[0].recv(4096)
    finally:
        for s in socks:
            s.close()
