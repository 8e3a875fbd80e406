"""colo_orch.daemon.actions._enter_colo: what the primary's proxy is told while COLO starts.

The proxy's side is its real mode table (colo_proxy.service.modes.Machine): each message
the orchestrator sends fires its event there, so an illegal order fails as it would in
the proxy."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

from colo_orch.daemon.actions import Actions
from colo_orch.daemon.proxy_supervision import ProxyMode
from colo_proxy.service.modes import EVENTS, Machine, Mode


class _Proxy:
    """The orchestrator's end of the control socket, answered by a proxy's mode table."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.sent: list[tuple[str, Mode]] = []  # each message, and the mode it left

    def send(self, msg: dict[str, Any]) -> bool:
        kind = msg["type"]
        if kind in EVENTS:
            if not self.machine.can(EVENTS[kind]):
                return False  # the proxy answers an error and changes nothing
            self.machine.fire(EVENTS[kind])
        self.sent.append((kind, self.machine.mode))
        return True


class _Backend:
    """QEMU's COLO entry as the orchestrator sees it: the migration runs, then the PVM
    stops for COLO's first checkpoint (the STOP event calls `on_checkpoint_stop`)."""

    notifies_proxy_of_checkpoints = False

    def __init__(self, proxy: _Proxy) -> None:
        self.proxy = proxy
        self.on_checkpoint_stop: Callable[[], None] | None = None
        self.mode_while_migrating: Mode | None = None
        self.sent_before_migrating: list[str] = []

    def enter_colo(self, uri: str) -> str:
        self.mode_while_migrating = self.proxy.machine.mode
        self.sent_before_migrating = [k for k, _ in self.proxy.sent]
        if self.on_checkpoint_stop is not None:
            self.on_checkpoint_stop()
        return f"COLO to {uri}"

    def checkpoint(self) -> str:
        self.proxy.sent.append(("(checkpoint)", self.proxy.machine.mode))
        assert self.on_checkpoint_stop is not None
        self.on_checkpoint_stop()
        return "checkpoint"


class _Stop:
    """The orchestrator's stop event: records the warm-up's wait instead of waiting."""

    def __init__(self) -> None:
        self.waited: list[float] = []

    def wait(self, seconds: float) -> bool:
        self.waited.append(seconds)
        return False


def _actions(machine: Machine, *, fenced: bool = False,
             warmup: float = 0.0) -> tuple[Actions, _Proxy, _Backend]:
    a = Actions.__new__(Actions)
    proxy = _Proxy(machine)
    backend = _Backend(proxy)
    a.proxy = proxy  # type: ignore[assignment]
    a.backend = backend  # type: ignore[assignment]
    a.cfg = SimpleNamespace(proxy_primary_command=[],  # type: ignore[assignment]
                            timing=SimpleNamespace(colo_warmup=warmup))
    a._stop = _Stop()  # type: ignore[assignment]
    a._fenced = fenced
    a._proxy_mode = ProxyMode.UNKNOWN
    return a, proxy, backend


@pytest.mark.parametrize("machine", [Machine(), Machine.buffering()], ids=["compare", "remus"])
def test_a_proxy_that_starts_holding_passes_output_until_colo_stops_the_pvm(
        machine: Machine) -> None:
    # A proxy started for this migration holds from its first packet; no SVM exists to
    # match it, so whatever it held before the STOP could only be dropped by the resume.
    a, proxy, backend = _actions(machine)
    a._enter_colo("tcp:10.99.1.1:4444")
    assert backend.mode_while_migrating is Mode.PASSTHROUGH
    home = machine.home
    assert backend.sent_before_migrating == ["pause", "mirror"]
    assert [k for k, _ in proxy.sent] == ["pause", "mirror", "resume", "checkpoint_barrier",
                                          "checkpoint_done"]
    assert proxy.sent[2] == ("resume", home)
    assert machine.mode is home
    assert a._proxy_mode is ProxyMode.COMPARE
    assert a.colo_entered  # `coloctl status` dates the last sync from here


def test_a_fenced_primary_keeps_its_output_held_through_colo_entry() -> None:
    machine = Machine()
    machine.fire(EVENTS["fence"])
    a, proxy, backend = _actions(machine, fenced=True)
    a._enter_colo("tcp:10.99.1.1:4444")
    assert backend.mode_while_migrating is Mode.FENCED
    assert "pause" not in [k for k, _ in proxy.sent]
    assert "mirror" not in [k for k, _ in proxy.sent]
    assert machine.mode is Mode.FENCED


def test_a_proxy_passing_since_a_take_over_mirrors_before_the_migration() -> None:
    # ALONE after the SVM died: the proxy passes since its failover, without mirroring,
    # and the resume comes only after QEMU's STOP has been seen. Client packets reaching
    # the stopped PVM in between are read when it runs again: the SVM needs them too.
    machine = Machine()
    machine.fire(EVENTS["failover"])
    a, _, backend = _actions(machine)
    a._enter_colo("tcp:10.99.1.1:4444")
    assert backend.mode_while_migrating is Mode.PASSTHROUGH
    assert backend.sent_before_migrating == ["pause", "mirror"]
    assert machine.mode is Mode.PROTECTED


def test_with_a_warm_up_the_output_passes_until_a_checkpoint_after_it() -> None:
    # timing.colo_warmup: the new SVM runs the guest's code once before its output is
    # compared; comparing starts at the STOP of the checkpoint that follows.
    machine = Machine()
    a, proxy, backend = _actions(machine, warmup=1.5)
    out = a._enter_colo("tcp:10.99.1.1:4444")
    assert [k for k, _ in proxy.sent] == ["pause", "mirror", "(checkpoint)", "resume",
                                          "checkpoint_barrier", "checkpoint_done"]
    assert proxy.sent[2] == ("(checkpoint)", Mode.PASSTHROUGH)  # passing until then
    assert a._stop.waited == [1.5]  # type: ignore[attr-defined]
    assert machine.mode is Mode.PROTECTED and a._proxy_mode is ProxyMode.COMPARE
    assert "warm-up" in out and backend.on_checkpoint_stop is None


def test_a_fenced_primary_has_no_warm_up() -> None:
    # Nothing passes while fenced, so there is nothing to warm up behind.
    machine = Machine()
    machine.fire(EVENTS["fence"])
    a, proxy, _ = _actions(machine, fenced=True, warmup=1.5)
    a._enter_colo("tcp:10.99.1.1:4444")
    assert "(checkpoint)" not in [k for k, _ in proxy.sent]
    assert a._stop.waited == []  # type: ignore[attr-defined]
