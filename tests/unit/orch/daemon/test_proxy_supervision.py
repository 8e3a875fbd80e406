"""colo_orch.daemon.proxy_supervision: a primary's proxy is told to pass output only once
per change of what we last told it, and never while an action owns the proxy."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Any

from colo_orch.core.config import Config
from colo_orch.core.state import Event, Machine, State
from colo_orch.daemon.proxy_supervision import ProxyMode, ProxySupervision


class _Link:
    connected = True

    def __init__(self) -> None:
        self.sent: list[str] = []

    def send(self, msg: dict[str, Any]) -> bool:
        self.sent.append(msg["type"])
        return True


class _Part(ProxySupervision):
    def __init__(self, role: str = "primary") -> None:
        self.cfg = Config(name="web", role=role, qmp="/q", qmp_events="/e",
                          heartbeat_listen="127.0.0.1:1", peer_heartbeat="127.0.0.1:2",
                          incoming_uri="tcp:127.0.0.1:4444")
        self.link = _Link()
        self.proxy = self.link  # type: ignore[assignment]
        self.role = role
        self.machine = Machine()
        for e in (Event.START, Event.VM_RUNNING):  # -> WAITING
            self.machine.fire(e)
        self._lock = threading.Lock()
        self._future = None
        self._proxy_lock = threading.Lock()
        self._proxy_proc = None
        self._proxy_role = ""
        self._proxy_mode = ProxyMode.UNKNOWN


def test_pause_is_sent_once_until_something_else_is_told() -> None:
    p = _Part()
    assert p.machine.state is State.WAITING
    p._sync_proxy_mode()
    p._sync_proxy_mode()
    assert p.link.sent == ["pause"] and p._proxy_mode is ProxyMode.PASS
    p._proxy_mode = ProxyMode.COMPARE  # an enter_colo resumed it, then COLO failed
    p._sync_proxy_mode()
    assert p.link.sent == ["pause", "pause"]


def test_no_pause_while_an_action_runs_or_on_a_secondary() -> None:
    p = _Part()
    p._future = Future()  # an enter_colo may switch the proxy to comparing at any moment
    p._sync_proxy_mode()
    s = _Part("secondary")
    s._sync_proxy_mode()
    assert p.link.sent == [] and s.link.sent == []
    assert p._proxy_mode is ProxyMode.UNKNOWN
