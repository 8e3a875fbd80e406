"""colo_orch.daemon.actions: a secondary's take-over tells the LAN where the VM now is, after
the on_takeover hook that may be what connects this host to the clients."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

from colo_orch.daemon.actions import Actions


class _Backend:
    def __init__(self, said: Path) -> None:
        self.said = said
        self.calls: list[str] = []

    def take_over(self, was_role: str) -> str:
        self.calls.append(f"take_over {was_role}")
        return "running"

    def announce(self) -> str:
        # What the hook wrote, if it ran already: the order the switches see.
        self.calls.append("announce after " + (self.said.read_text() if self.said.exists()
                                               else "nothing"))
        return "; announced"


class _Arbiter:
    def acquire_now(self, timeout: float) -> bool:
        return True


def _actions(backend: _Backend, hook: list[str]) -> Actions:
    """Actions with only what _take_over uses."""
    a = Actions.__new__(Actions)
    a.backend = backend  # type: ignore[assignment]
    a.proxy = None
    a.arbiter = _Arbiter()  # type: ignore[assignment]
    a.cfg = SimpleNamespace(on_takeover=hook,  # type: ignore[assignment]
                            timing=SimpleNamespace(lease_ttl=10.0))
    a._peer_lost_at = None
    return a


def test_a_secondary_announces_its_vm_after_the_on_takeover_hook(tmp_path: Path) -> None:
    said = tmp_path / "hook"
    b = _Backend(said)
    hook = [sys.executable, "-c", f"open({str(said)!r}, 'w').write('uplink up')"]
    out = _actions(b, hook)._take_over("secondary")
    assert b.calls == ["take_over secondary", "announce after uplink up"]
    assert "on_takeover hook ran; announced" in out


def test_a_primary_that_lost_its_secondary_announces_nothing(tmp_path: Path) -> None:
    # Its VM never moved: the switches know its port.
    b = _Backend(tmp_path / "hook")
    _actions(b, [])._take_over("primary")
    assert b.calls == ["take_over primary"]
