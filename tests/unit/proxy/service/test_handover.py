"""colo_proxy.wire.handover: offsets from the secondary-role proxy to the primary-role one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from colo_proxy.service import handover_file
from colo_proxy.service.secondary import SecondaryProxy
from colo_proxy.wire.offset import Offset

V4 = Offset("10.99.0.10", 80, "10.99.0.100", 40000, 1000, 5000, 4000, True, 7)
V6 = Offset("fd99::10", 80, "fd99::100", 40001, 2000, 2000, 0, True, -3)  # TS only
NO_TS = Offset("10.99.0.10", 22, "10.99.0.100", 40002, 1, 11, 10, True, None)
HALF = Offset("10.99.0.10", 80, "10.99.0.100", 40003, 0, 9, 9, False, None)  # one side only
ZERO = Offset("10.99.0.10", 80, "10.99.0.100", 40004, 5, 5, 0, True, 0)  # nothing to move


def test_write_then_take_keeps_the_flows_that_move(tmp_path: Path) -> None:
    path = handover_file.path_for(tmp_path / "proxy.sock")
    assert path.name == "proxy.sock.handover.json"
    assert handover_file.write(path, [V4, V6, NO_TS, HALF, ZERO]) == 3
    assert handover_file.take(path) == [V4, V6, NO_TS]
    assert not path.exists()  # taken once: a later primary start finds none
    assert handover_file.take(path) == []


def test_a_damaged_file_is_dropped_not_trusted(tmp_path: Path) -> None:
    path = tmp_path / "h.json"
    for text in ("{", '{"version": 99, "offsets": []}', '{"version": 1, "offsets": [{}]}',
                 '[1, 2]'):
        path.write_text(text)
        assert handover_file.take(path) == []
        assert not path.exists()


class Datapath:
    def __init__(self) -> None:
        self.modes: list[int] = []

    def set_mode(self, mode: int) -> None:
        self.modes.append(mode)

    def offsets(self) -> list[Offset]:
        return [V4, HALF]

    def carried(self) -> int:
        return 1

    def carried_offsets(self) -> list[Offset]:
        return [NO_TS]  # carried over an earlier role swap: goes on with the next

    def reset_offsets(self) -> int:
        return 2

    def counters(self) -> dict[str, Any]:
        return {}


def test_secondary_writes_at_failover_and_voids_at_resync(tmp_path: Path) -> None:
    path = tmp_path / "h.json"
    proxy = SecondaryProxy(Datapath(), handover=path)
    proxy.on_control({"type": "pause"})
    assert not path.exists()  # a pause is no failover: no role swap follows
    proxy.on_control({"type": "resume"})
    proxy.on_control({"type": "failover"})
    assert handover_file.take(path) == [V4, NO_TS]
    proxy.on_control({"type": "failover"})
    # The take-over's own resume of the SVM, reported like a checkpoint's: no checkpoint
    # follows a failover, and voiding the file lost the offsets of the flows opened since
    # the last checkpoint at the role swap.
    proxy.on_control({"type": "checkpoint_done"})
    assert path.exists()
    proxy.on_control({"type": "resume"})  # protected again: no role swap comes
    assert not path.exists()
    proxy.on_control({"type": "checkpoint_done"})  # the VMs share one space again
    assert not path.exists()
