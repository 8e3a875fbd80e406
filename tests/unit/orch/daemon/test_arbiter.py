"""The local lease arbiter (one machine only): one holder at a time, expiry, release,
and the view the loop reads."""

from __future__ import annotations

from pathlib import Path

from colo_orch.daemon.arbiter import LocalLeaseArbiter


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _pair(tmp_path: Path, clock: Clock) -> tuple[LocalLeaseArbiter, LocalLeaseArbiter]:
    return (LocalLeaseArbiter(tmp_path / "lease", "pri", ttl=2.0, margin=0.5, clock=clock),
            LocalLeaseArbiter(tmp_path / "lease", "sec", ttl=2.0, margin=0.5, clock=clock))


def test_one_holder_until_release_or_expiry(tmp_path: Path) -> None:
    clock = Clock()
    a, b = _pair(tmp_path, clock)
    a.want(True, clock.t)
    assert not b.acquire_now(1.0)
    assert b.view().holder == "pri" and not b.view().held
    clock.t = 1.5
    a.want(True, clock.t)  # renewed to 3.5
    clock.t = 3.0
    assert not b.acquire_now(1.0)
    clock.t = 3.6  # a's loop stopped asking: the lease lapsed
    assert b.view().holder is None
    assert b.acquire_now(1.0)
    a.want(True, clock.t)
    assert a.view().holder == "sec" and not a.view().held
    a.release()  # not the holder: no effect
    assert a.view().holder == "sec"
    b.want(False, clock.t)  # not wanted any more: released at once
    assert a.acquire_now(1.0)


def test_view_is_certain_only_until_margin_before_expiry(tmp_path: Path) -> None:
    clock = Clock()
    a, b = _pair(tmp_path, clock)
    clock.t = 10.0
    a.want(True, clock.t)
    v = a.view()
    assert (v.held, v.holder, v.reachable, v.error) == (True, "pri", True, "")
    assert v.safe_until == 10.0 + 2.0 - 0.5
    nb = b.view()
    assert (nb.held, nb.holder, nb.safe_until) == (False, "pri", 0.0)
    # The loop's rule: held while now < safe_until; the other host could acquire only at 12.
    assert v.safe_until < 12.0
    clock.t = 12.0
    assert b.acquire_now(1.0)


def test_start_and_stop_do_not_release(tmp_path: Path) -> None:
    clock = Clock()
    a, b = _pair(tmp_path, clock)
    a.start()
    a.want(True, clock.t)
    a.stop()
    assert b.view().holder == "pri"


def test_a_secondary_does_not_take_over_after_the_primary_served_alone(
        tmp_path: Path) -> None:
    # S6 (docs/ORCHESTRATOR.md): the primary records "alone" before it serves alone.
    clock = Clock()
    a, b = _pair(tmp_path, clock)
    a.want_sync("")
    b.want_sync("alone")  # a non-holder cannot record anything
    a.want(True, clock.t)
    assert not a.view().alone_recorded
    a.want_sync("alone")
    assert a.view().alone_recorded
    clock.t = 3.0  # the primary lost everything: its lease lapsed
    assert not b.acquire_now(1.0)
    v = b.view()
    assert v.stale and "stale" in v.error and v.holder is None
    b.want(False, clock.t)  # fenced: asked anew next time
    assert not b.view().stale
    # Back in protection, the primary says the secondary's copy is current again.
    a.want(True, clock.t)
    a.want_sync("protected")
    assert not a.view().alone_recorded
    clock.t = 6.0
    assert b.acquire_now(1.0)
    b.want_sync("alone")
    assert b.view().alone_recorded
    clock.t = 9.0
    # The secondary took over and served alone: the old primary's copy is stale now.
    assert not a.acquire_now(1.0)
    assert a.view().stale
