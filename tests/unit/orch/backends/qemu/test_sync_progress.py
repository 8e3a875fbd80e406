"""The QEMU backend's first copy of a protection: its progress as QEMU reports it, its
configurable time limit and bandwidth."""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import Any

import pytest

from colo_orch.backends.base import BackendError
from colo_orch.backends.qemu.blk.graph import DiskError
from tests.unit.orch.backends.qemu.blk.test_graph import FakeMon, _rep
from tests.unit.orch.backends.qemu.test_tls import Mon, _Backend


def test_the_memory_copy_reports_progress_and_ends_it(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[Any] = []
    answers = [{"status": "active", "ram": {"transferred": 1_000_000, "total": 4_000_000}},
               {"status": "active", "ram": {"transferred": 3_000_000, "total": 4_000_000}},
               {"status": "colo", "ram": {"transferred": 4_000_000, "total": 4_000_000}}]
    b: _Backend

    def migrate_status() -> dict[str, Any]:
        seen.append(b.progress())  # what GET /state would show at that moment
        return answers.pop(0)

    b = _Backend(Mon({"query-migrate": migrate_status}), None)
    b.migration_bandwidth = 250.0
    b.migration_downtime = 0.04
    with caplog.at_level(logging.INFO, "colo_orch.qemu"):
        assert "in COLO" in b.enter_colo("tcp:10.0.0.2:4444")
    assert seen[0] is None
    assert [(p.phase, p.done, p.total) for p in seen[1:]] == [
        ("memory", 1_000_000, 4_000_000), ("memory", 3_000_000, 4_000_000)]
    assert b.progress() is None  # over once in COLO
    assert "protection, first copy: memory 25% (1.0 MB of 4.0 MB" in caplog.text
    params = next(a for n, a in b.mon.calls if n == "migrate-set-parameters")  # type: ignore[attr-defined]
    assert params["max-bandwidth"] == 250_000_000
    assert params["downtime-limit"] == 40


def test_the_memory_copy_gives_up_after_sync_timeout_and_says_how_far_it_came() -> None:
    mon = Mon({"query-migrate": {"status": "active", "ram": {"transferred": 5, "total": 10}},
               "migrate_cancel": None})
    b = _Backend(mon, None)
    b.sync_timeout = 0.3
    with pytest.raises(BackendError, match=r"did not reach COLO within 0.3 s "
                                           r"\(timing.sync_timeout; memory 50% \(5 B of 10 B"):
        b.enter_colo("tcp:10.0.0.2:4444")
    assert b.progress() is None


def test_the_disk_resync_reports_offset_against_length() -> None:
    jobs = [[{"device": "disk0-resync", "ready": False, "offset": 0, "len": 100}],
            [{"device": "disk0-resync", "ready": False, "offset": 60, "len": 100}],
            [{"device": "disk0-resync", "ready": True, "offset": 100, "len": 100}]]
    mirrored: list[int] = []
    mon = FakeMon({"query-block-jobs": lambda: jobs.pop(0) if len(jobs) > 1 else jobs[0],
                   "block-job-cancel": lambda **a: None if mirrored else DiskError("no job"),
                   "drive-mirror": lambda **a: mirrored.append(1)})
    got: list[tuple[int, int]] = []
    _rep(mon).resync("10.0.0.2", progress=lambda done, total: got.append((done, total)))
    assert got == [(0, 100), (60, 100), (100, 100)]


def test_a_stray_migration_is_cancelled_and_waited_for() -> None:
    # QEMU frees the migration's yank instance only once it ended: "cancelling" is not yet.
    states = ["active", "cancelling", "cancelling", "cancelled"]
    mon = Mon({"query-migrate": lambda: {"status": states.pop(0)}, "migrate_cancel": None})
    b = _Backend(mon, None)
    assert b.cancel_migration() == "migration cancelled (was active, now cancelled)"
    assert [n for n, _ in mon.calls].count("query-migrate") == 4  # type: ignore[attr-defined]
    assert ("migrate_cancel", {}) in mon.calls  # type: ignore[attr-defined]


def test_a_migration_that_never_ends_fails_the_cancel(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter(range(0, 100, 4))
    monkeypatch.setattr("colo_orch.backends.qemu.backend.time.monotonic", lambda: next(clock))
    monkeypatch.setattr("colo_orch.backends.qemu.backend.time.sleep", lambda _s: None)
    mon = Mon({"query-migrate": {"status": "cancelling"}, "migrate_cancel": None})
    with pytest.raises(BackendError, match="still cancelling 10 s after migrate_cancel"):
        _Backend(mon, None).cancel_migration()


def test_a_colo_migration_that_ends_completed_restarts_the_vm_and_fails() -> None:
    # QEMU ended the migration without COLO: the VM stays stopped from the last pass.
    # Polling on for "colo" kept the service down until sync_timeout (chaos seed 1).
    statuses = [{"status": "active", "ram": {"transferred": 5, "total": 10}},
                {"status": "completed", "ram": {"transferred": 10, "total": 10}}]
    mon = Mon({"query-migrate": lambda: statuses.pop(0) if len(statuses) > 1 else statuses[0],
               "query-status": {"status": "postmigrate", "running": False}, "cont": None})
    b = _Backend(mon, None)
    with pytest.raises(BackendError, match="ended 'completed', not in COLO"):
        b.enter_colo("tcp:10.0.0.2:4444")
    assert mon.names()[-1] == "cont"


class _Events(Mon):
    """QEMU's events at COLO entry, stamped (qapi/qmp-event.c: the wall clock)."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        super().__init__({})
        self.queue = events

    def pull_event(self, wait: float) -> dict[str, Any] | None:  # type: ignore[override]
        return self.queue.pop(0) if self.queue else None


def _stamped(name: str, wall: float) -> dict[str, Any]:
    return {"event": name, "timestamp": {"seconds": int(wall),
                                         "microseconds": round(wall % 1 * 1e6)}}


@pytest.mark.parametrize(("resume_in", "said"), [
    (-2.0, r"the PVM resumed \d+ ms before its proxy compared"),
    (30.0, r"the proxy compared \d+ ms before the PVM resumed")])
def test_colo_entry_says_how_the_proxys_switch_fell_against_the_pvms_resume(
        resume_in: float, said: str, caplog: pytest.LogCaptureFixture) -> None:
    # The proxy compares from the STOP that the backend reads after the fact; a PVM that
    # QEMU resumed before that sent output uncompared, and the entry says so.
    now = time.time()
    b = _Backend(Mon({"query-migrate": {"status": "colo"}}), None)
    b.events = _Events([_stamped("STOP", now - 3), _stamped("RESUME", now + resume_in)])  # type: ignore[assignment]
    stops: list[float] = []
    b.on_checkpoint_stop = lambda: stops.append(time.monotonic())
    with caplog.at_level(logging.WARNING, "colo_orch.qemu"):
        out = b.enter_colo("tcp:10.0.0.2:4444")
    assert len(stops) == 1
    assert re.search(said, out), out
    assert ("output in between passed uncompared" in caplog.text) == (resume_in < 0)


def test_colo_entry_without_a_resume_in_sight_says_so() -> None:
    b = _Backend(Mon({"query-migrate": {"status": "colo"}}), None)
    b.events = _Events([_stamped("STOP", time.time())])  # type: ignore[assignment]
    b.on_checkpoint_stop = lambda: None
    assert "the PVM's RESUME not seen within 1 s" in b.enter_colo("tcp:10.0.0.2:4444")


def test_colo_entry_tells_the_stop_as_the_events_thread_reads_it() -> None:
    # The events thread sees the STOP before any poll of the action thread does (a
    # query-migrate during the last pass waits for it): the hook runs there, once.
    now = time.time()
    told: list[str] = []
    b: _Backend

    def migrate_status() -> dict[str, Any]:
        if not told:
            reader = threading.Thread(target=read, args=(_stamped("STOP", now),),
                                      name="qmp-events")
            reader.start()
            reader.join()
            assert told == ["qmp-events"]  # before the action thread polled again
            return {"status": "active"}
        return {"status": "colo"}

    def read(event: dict[str, Any]) -> None:
        # As EventReader does: the backend's callback first, then the queue.
        b._on_event(event)
        events.queue.append(event)
        events.queue.append(_stamped("RESUME", now + 30))

    b = _Backend(Mon({"query-migrate": migrate_status}), None)
    events = _Events([])
    b.events = events  # type: ignore[assignment]
    b.on_checkpoint_stop = lambda: told.append(threading.current_thread().name)
    out = b.enter_colo("tcp:10.0.0.2:4444")
    assert told == ["qmp-events"]
    assert "the proxy compared" in out
    b._on_event(_stamped("STOP", now + 40))  # a checkpoint's STOP, after the entry
    assert told == ["qmp-events"]
