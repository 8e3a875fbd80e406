"""colo_orch.backends.qemu.qmp against a QMP server that follows QEMU's qmp-spec, on a Unix socket."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from colo_orch.backends.qemu.backend import _Monitor
from colo_orch.backends.qemu.qmp import QmpClient, QmpError
from tests.support.qmp_server import FakeQmp


@pytest.fixture
def qmp(tmp_path: Path) -> Iterator[FakeQmp]:
    srv = FakeQmp(tmp_path / "qmp.sock")
    yield srv
    srv.close()


def test_commands_answers_and_interleaved_events(qmp: FakeQmp) -> None:
    c = QmpClient(qmp.path, 2.0)
    c.connect()
    assert c.cmd_raw("query-status") == {"return": {"status": "running", "running": True},
                                        "id": "colo-2"}
    # The event that came between the command and its answer is kept for pull_event.
    ev = c.pull_event(0)
    assert ev is not None and ev["event"] == "RESUME"
    assert c.pull_event(0.05) is None
    assert c.cmd_raw("echo", {"a": 1})["return"] == {"echo": {"a": 1}}
    assert c.cmd_raw("bad")["error"]["desc"] == "no such thing"
    c.close()


def test_a_timed_out_answer_arriving_late_is_not_taken_for_the_next(qmp: FakeQmp) -> None:
    c = QmpClient(qmp.path, 0.2)
    c.connect()
    with pytest.raises(TimeoutError):
        c.cmd_raw("late")
    assert c.cmd_raw("echo", {"n": 2})["return"] == {"echo": {"n": 2}}


def test_clear_events_forgets_received_ones(qmp: FakeQmp) -> None:
    c = QmpClient(qmp.path, 2.0)
    c.connect()
    c.cmd_raw("query-status")
    c.clear_events()
    assert c.pull_event(0) is None


def test_a_closed_monitor_or_a_stranger_is_an_error(tmp_path: Path, qmp: FakeQmp) -> None:
    c = QmpClient(qmp.path, 2.0)
    c.connect()
    c.cmd_raw("quit")
    with pytest.raises(QmpError, match="closed"):
        c.pull_event(1.0)
    assert not c.connected
    other = FakeQmp(tmp_path / "other.sock", greeting={"hello": 1})
    with pytest.raises(QmpError, match="not a QMP monitor"):
        QmpClient(other.path, 2.0).connect()
    other.close()
    with pytest.raises(OSError):
        QmpClient(str(tmp_path / "none.sock"), 2.0).connect()


def test_one_monitor_shared_by_two_threads(qmp: FakeQmp) -> None:
    """The orchestrator's observer and action threads use the same monitors at once
    (qemu.qmp's sync shim failed here: one thread's call found the loop running)."""
    mon, events = _Monitor(qmp.path, 5.0), _Monitor(qmp.path, 5.0)
    errors: list[BaseException] = []

    def observer() -> None:
        try:
            for i in range(200):
                assert mon.cmd("echo", i=i) == {"echo": {"i": i}}
        except BaseException as exc:
            errors.append(exc)

    def actor() -> None:
        try:
            for _ in range(200):
                assert mon.cmd("query-status")["running"] is True
                events.clear_events()
                events.pull_event(0)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=observer), threading.Thread(target=actor)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == [] and not any(t.is_alive() for t in threads)
