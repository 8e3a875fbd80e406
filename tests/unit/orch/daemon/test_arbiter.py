"""The local lease arbiter: one holder at a time, expiry, release."""

from __future__ import annotations

from pathlib import Path

from colo_orch.daemon.arbiter import LocalLeaseArbiter


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_one_holder_until_release_or_expiry(tmp_path: Path) -> None:
    clock = Clock()
    a = LocalLeaseArbiter(tmp_path / "lease", ttl=2.0, clock=clock)
    b = LocalLeaseArbiter(tmp_path / "lease", ttl=2.0, clock=clock)
    assert a.acquire("pri")
    assert not b.acquire("sec")
    assert b.holder() == "pri"
    clock.t = 1.5
    assert a.acquire("pri")  # renewed to 3.5
    clock.t = 3.0
    assert not b.acquire("sec")
    clock.t = 3.6
    assert b.holder() is None
    assert b.acquire("sec")
    assert not a.acquire("pri")
    b.release("pri")  # not the holder: no effect
    assert a.holder() == "sec"
    b.release("sec")
    assert a.acquire("pri")
