"""Acceptance of the lab issue: both VMs serve, COLO runs 20 checkpoints, the SVM stays sound."""

from __future__ import annotations

import pytest

from colo_lab.lab import Lab
from colo_lab.smoke import run_smoke

CHECKPOINTS = 20


pytestmark = pytest.mark.lab(secondary="standalone", orchestrators=False)


def test_two_vms_enter_colo_and_survive_20_checkpoints(lab: Lab) -> None:
    said: list[str] = []
    res = run_smoke(lab, CHECKPOINTS, said.append)

    assert "PVM serves the client" in said
    assert "SVM serves the client (PVM's uplink down)" in said
    assert res.colo_seconds > 0
    assert res.checkpoints == CHECKPOINTS
    # Each checkpoint is a STOP/RESUME pair seen on both monitors (checked inside
    # checkpoint()); its wall time includes both VMs' pause.
    assert len(res.pause_ms) == CHECKPOINTS
    # The SVM got the PVM's memory at the checkpoints: it serves a key the PVM
    # stored between checkpoints, and nothing in either guest's kernel log broke.
    assert res.svm_answers
    assert res.serial_problems == []
