"""colo_orch.daemon.actions: a checkpoint keeps its step marks (monotonic) beside its steps,
so that a trace taken elsewhere on the host can be joined with them."""

from __future__ import annotations

import logging
import time
from collections import Counter

import pytest
from prometheus_client import CollectorRegistry

from colo_orch.daemon.actions import Actions
from colo_orch.daemon.metrics import OrchMetrics


class _Backend:
    notifies_proxy_of_checkpoints = True  # nothing to tell a proxy from here

    def __init__(self) -> None:
        self.checkpoint_stopped_at: float | None = None
        self.checkpoint_resumed_at: float | None = None
        self.checkpoint_pause_s = 0.045

    def checkpoint(self) -> str:
        self.checkpoint_stopped_at = time.monotonic()
        self.checkpoint_resumed_at = self.checkpoint_stopped_at + 0.045
        return "checkpointed"


def _actions(backend: object, proxy: object = None) -> Actions:
    """Actions with only what _checkpoint uses: the backend, the proxy, metrics, counts."""
    a = Actions.__new__(Actions)
    a.backend = backend  # type: ignore[assignment]
    a.proxy = proxy  # type: ignore[assignment]
    a.metrics = OrchMetrics(CollectorRegistry())
    a.checkpoints = Counter()
    return a


def test_the_last_checkpoint_keeps_its_marks_and_their_steps() -> None:
    a = _actions(_Backend())
    t = time.monotonic()
    marks = {"held_since": t - 0.010, "detected_at": t - 0.004, "received": t - 0.003,
             "decided": t - 0.002}
    a._checkpoint(("payload",), marks)
    got = a.last_checkpoint_marks
    assert {"held_since", "detected_at", "received", "decided", "stopped", "resumed",
            "released"} <= set(got)
    assert got["held_since"] == t - 0.010
    assert got["held_since"] < got["decided"] < got["stopped"] < got["resumed"]
    assert a.last_checkpoint_steps["stop_to_resume"] == 45.0
    assert a.last_checkpoint_steps["detection"] == 6.0
    assert a.checkpoints["payload"] == 1


class _QemuLike:
    """Tells the proxy itself nothing: the runner does, around the hooks it sets."""

    notifies_proxy_of_checkpoints = False

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.on_checkpoint_triggered: object = None
        self.on_checkpoint_stop: object = None
        self.checkpoint_pause_s = 0.045

    def checkpoint(self) -> str:
        self.log.append("qmp: migrate-set-parameters")
        assert callable(self.on_checkpoint_triggered) and callable(self.on_checkpoint_stop)
        self.on_checkpoint_triggered()
        self.log.append("qemu: STOP")
        self.on_checkpoint_stop()
        self.log.append("qemu: RESUME")
        return "checkpointed"


class _Proxy:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    def send(self, msg: dict[str, object]) -> bool:
        self.log.append(f"proxy: {msg['type']}")
        return True


def test_the_trigger_goes_out_before_the_proxy_hears_of_the_checkpoint() -> None:
    # checkpoint_started waited for the proxy's answer before QEMU was told; now QEMU
    # has the command first, and the proxy still hears started, barrier, done in order.
    log: list[str] = []
    a = _actions(_QemuLike(log), _Proxy(log))
    a._checkpoint(("payload",), {"decided": time.monotonic()})
    assert log == ["qmp: migrate-set-parameters", "proxy: checkpoint_started", "qemu: STOP",
                   "proxy: checkpoint_barrier", "qemu: RESUME", "proxy: checkpoint_done"]


class _Unmarked:
    """Like the Xen backend: libxl does the checkpoint's steps, none of them marked."""

    notifies_proxy_of_checkpoints = True

    def checkpoint(self) -> str:
        return "checkpointed"


def _steps_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "checkpoint steps" in r.getMessage()]


def test_a_checkpoint_without_marked_steps_logs_no_empty_steps_line(
        caplog: pytest.LogCaptureFixture) -> None:
    # Nested Xen's colo-orch logged "checkpoint steps (ms): " with nothing after it at
    # every checkpoint (run BD).
    caplog.set_level(logging.INFO, logger="colo_orch")
    for backend, want in ((_Unmarked(), 0), (_Backend(), 1)):
        caplog.clear()
        a = _actions(backend)
        a._checkpoint(("periodic",), {"decided": time.monotonic()})
        lines = _steps_lines(caplog)
        assert len(lines) == want, lines
        assert all(not line.endswith(": ") for line in lines)
