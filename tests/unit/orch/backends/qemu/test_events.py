"""colo_orch.backends.qemu.events: QEMU's events read as they come, against QMP servers
that follow qmp-spec on Unix sockets (no QEMU)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from colo_lab.wait import wait_until
from colo_orch.backends.qemu.backend import QemuBackend
from colo_orch.backends.qemu.events import DiskEvents, EventReader
from colo_orch.core.disks import Disk
from tests.support.qmp_server import FakeQmp

D = Disk("disk0", "/i/d.raw", "/i/a.qcow2", "/i/h.qcow2")
BAD_WRITE = {"node-name": "disk0-replication", "type": "write", "sector": 2048,
             "sectors-count": 8, "error": "Input/output error"}


def _vm(cmd: dict[str, Any], send: Callable[[dict[str, Any]], None]) -> None:
    """The command monitor of a running COLO primary."""
    answers = {"query-status": {"status": "running", "running": True},
               "query-migrate": {"status": "colo"}, "query-colo-status": {"mode": "primary"},
               "query-blockstats": [{"device": "colo-disk0", "stats": {"wr_bytes": 4096}}]}
    send({"return": answers.get(cmd["execute"], {}), "id": cmd.get("id")})


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[tuple[QemuBackend, FakeQmp]]:
    mon = FakeQmp(tmp_path / "vm.qmp", handler=_vm)
    events = FakeQmp(tmp_path / "vm-events.qmp")
    b = QemuBackend(mon.path, events.path, [], disks=(D,))
    b.blk.state, b.blk.peer = "replicating", "10.0.0.2"  # as after enter_colo
    wait_until(events.connections, 5, "the events reader to connect")
    yield b, events
    b.close()
    mon.close()
    events.close()


def test_a_failed_write_between_checkpoints_breaks_replication(
        backend: tuple[QemuBackend, FakeQmp]) -> None:
    """Before, the event waited in the socket until the next checkpoint, which began by
    discarding it: the pair stayed PROTECTED with a write missing on the secondary."""
    b, events = backend
    assert b.observe().disk_error == ""
    events.push("QUORUM_REPORT_BAD", BAD_WRITE)
    b.events.clear_events()  # what a checkpoint does first
    obs = wait_until(lambda: b.observe() if b.observe().disk_error else None, 5,
                     "the observer to see the broken replication")
    assert obs.disk_error == "1 write(s) to the secondary's disk failed"
    st, count = b.disk_status()
    assert st is not None and count == 1
    assert st.state == "broken"
    assert st.error_events == {"QUORUM_REPORT_BAD": 1, "BLOCK_IO_ERROR": 0}
    assert st.last_error_event == ("QUORUM_REPORT_BAD on disk0-replication: write of 8 "
                                   "sector(s) at 2048 failed: Input/output error")


def test_events_still_reach_those_who_wait_for_them(tmp_path: Path) -> None:
    srv = FakeQmp(tmp_path / "e.qmp")
    seen: list[str] = []
    r = EventReader(srv.path, 2.0, lambda ev: seen.append(ev["event"]))
    try:
        wait_until(srv.connections, 5, "the reader to connect")
        srv.push("STOP")
        srv.push("BLOCK_IO_ERROR", {"device": "colo-disk0", "operation": "write",
                                    "action": "report", "reason": "No space left"})
        srv.push("RESUME")
        got = [r.pull_event(2.0), r.pull_event(2.0), r.pull_event(2.0)]
        assert [e and e["event"] for e in got] == ["STOP", "BLOCK_IO_ERROR", "RESUME"]
        assert r.pull_event(0.05) is None
        assert seen == ["STOP", "BLOCK_IO_ERROR", "RESUME"]
        # Cleared events are gone for the actions, not for the callback.
        srv.push("STOP")
        wait_until(lambda: len(seen) == 4, 5, "the reader to read the STOP")
        r.clear_events()
        assert r.pull_event(0.05) is None
        # A replaced VM: the reader connects to the new monitor by itself.
        r.drop()
        srv.close()
        (tmp_path / "e.qmp").unlink()
        srv = FakeQmp(tmp_path / "e.qmp")
        wait_until(srv.connections, 5, "the reader to reconnect")
        srv.push("RESUME")
        ev = r.pull_event(2.0)
        assert ev is not None and ev["event"] == "RESUME"
    finally:
        r.close()
        srv.close()


def test_a_vm_without_an_events_socket_is_an_error_for_a_waiting_action(
        tmp_path: Path) -> None:
    r = EventReader(str(tmp_path / "none.qmp"), 1.0, lambda ev: None)
    try:
        with pytest.raises(ConnectionError, match="no QMP socket"):
            r.pull_event(0.1)
        with pytest.raises(ConnectionError):
            r.clear_events()
    finally:
        r.close()


def test_disk_events_count_only_disk_errors() -> None:
    d = DiskEvents()
    assert not d.note({"event": "STOP"})
    assert d.note({"event": "BLOCK_IO_ERROR", "data": {"node-name": "n1", "operation": "read",
                                                       "action": "stop"}})
    assert d.counts == {"QUORUM_REPORT_BAD": 0, "BLOCK_IO_ERROR": 1}
    assert d.last == "BLOCK_IO_ERROR on n1: read failed, action stop"
    d.note({"event": "QUORUM_REPORT_BAD", "data": {"node-name": "r", "type": "flush"}})
    assert d.last == "QUORUM_REPORT_BAD on r: flush failed"
