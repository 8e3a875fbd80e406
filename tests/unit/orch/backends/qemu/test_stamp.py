"""colo_orch.backends.qemu.backend: QEMU's stamp on an event, on the monotonic clock."""

from __future__ import annotations

import time

import pytest

from colo_orch.backends.qemu.backend import _monotonic_stamp


def test_a_stamp_two_ms_old_reads_two_ms_before_now() -> None:
    wall = time.time() - 0.002
    ev = {"event": "STOP", "timestamp": {"seconds": int(wall),
                                         "microseconds": round(wall % 1 * 1e6)}}
    now = time.monotonic()
    assert _monotonic_stamp(ev, now) == pytest.approx(now - 0.002, abs=0.0005)


@pytest.mark.parametrize("ev", [{"event": "STOP"}, {"event": "STOP", "timestamp": None},
                                {"event": "STOP", "timestamp": {"microseconds": 5}}])
def test_an_event_without_a_stamp_reads_as_now(ev: dict[str, object]) -> None:
    assert _monotonic_stamp(ev, 12.5) == 12.5
