"""colo_orch.daemon.actions: a checkpoint keeps its step marks (monotonic) beside its steps,
so that a trace taken elsewhere on the host can be joined with them."""

from __future__ import annotations

import time
from collections import Counter

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


def test_the_last_checkpoint_keeps_its_marks_and_their_steps() -> None:
    a = Actions.__new__(Actions)
    a.backend = _Backend()  # type: ignore[assignment]
    a.proxy = None
    a.metrics = OrchMetrics(CollectorRegistry())
    a.checkpoints = Counter()
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
