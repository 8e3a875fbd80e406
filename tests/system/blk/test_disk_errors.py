"""Disk errors reach the orchestrator as they happen (issue 15): a write that fails on
the secondary's disk between two checkpoints ends protection, visibly.

Before, QEMU's events were read only during a checkpoint, which first discarded the
ones that had come since: the failed writes went unseen and the pair stayed PROTECTED
over disks that differ."""

from __future__ import annotations

import pytest

from colo_lab import faults, pair
from colo_lab.lab import Lab
from colo_lab.wait import wait_until
from tests.support.records import Writer

pytestmark = [pytest.mark.lab(disk=True), pytest.mark.timeout(150)]


@pytest.mark.lab(spoils=True)  # the connection stays cut
def test_failed_writes_on_a_reset_nbd_connection_end_protection(lab: Lab) -> None:
    before = pair.metrics(lab, "primary")
    with Writer(lab, 0) as w:
        wait_until(lambda: len(w.acked) >= 3, 60, "records before the cut")
        # The replication's connection is reset; the port still takes new connections,
        # so the probe of the NBD port sees nothing wrong: only QEMU's events tell.
        assert faults.cut_nbd(lab)
        acked = len(w.acked)
        wait_until(lambda: len(w.acked) >= acked + 3, 60, "records after the cut")
    st = pair.wait_state(lab, "primary", {"ALONE", "DEGRADED"}, 60)
    assert any("write(s) to the secondary's disk failed" in s for s in st["recent"]), st["recent"]
    disk = st["disk"]  # replication broke, then the primary went on alone
    assert disk["degraded"] and disk["state"] in ("broken", "alone"), disk
    assert "write(s) to the secondary's disk failed" in disk["problem"], disk
    assert disk["error_events"]["QUORUM_REPORT_BAD"] >= 1, disk
    assert disk["last_error_event"].startswith("QUORUM_REPORT_BAD on "), disk
    after = pair.metrics(lab, "primary")
    key = 'colo_disk_error_events_total{event="QUORUM_REPORT_BAD"}'
    assert after[key] >= 1 and before[key] == 0, (before.get(key), after.get(key))
    # The guest went on writing to its own disk throughout.
    assert lab.http("/kv/r0", timeout=30)[0] == 200
