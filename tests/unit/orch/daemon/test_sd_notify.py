"""colo_orch.daemon.sd_notify: READY/STATUS datagrams to systemd's NOTIFY_SOCKET."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from colo_orch.daemon.sd_notify import Notifier


def _receiver(address: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(address)
    s.settimeout(5)
    return s


def test_a_path_socket_gets_each_message(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    with _receiver(path) as r:
        notify = Notifier({"NOTIFY_SOCKET": path})
        assert notify("READY=1\nSTATUS=WAITING (primary): started")
        assert r.recv(4096) == b"READY=1\nSTATUS=WAITING (primary): started"
        assert notify("STOPPING=1") and r.recv(4096) == b"STOPPING=1"


def test_an_abstract_socket_is_written_with_an_at_sign() -> None:
    name = f"colo-test-notify-{os.getpid()}"
    with _receiver("\0" + name) as r:
        assert Notifier({"NOTIFY_SOCKET": "@" + name})("READY=1")
        assert r.recv(4096) == b"READY=1"


def test_outside_systemd_or_with_the_socket_gone_nothing_fails(tmp_path: Path) -> None:
    assert Notifier({})("READY=1") is False
    assert Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})("READY=1") is False
