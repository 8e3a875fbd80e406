"""pair.wait_state against an orchestrator whose state changes between two polls."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from colo_lab import pair
from colo_lab.lab import Lab


def test_a_state_seen_only_in_the_log_is_returned_as_read_after_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "orch-primary.log"
    log.write_text("PROTECTED -> FAILING_OVER: peer lost\n")
    reads: list[dict[str, Any]] = []

    def state(lab: Lab, host: str, timeout: float = 5.0) -> dict[str, Any]:
        # The take-over ends just after this read: its log line lands before the next look
        # at the log, and the read is the state before it (CI's race).
        if not reads:
            reads.append({"state": "FAILING_OVER", "last_takeover_s": None})
            with log.open("a") as f:
                f.write("FAILING_OVER -> ALONE: took over\n")
        else:
            reads.append({"state": "WAITING", "last_takeover_s": 0.044})
        return reads[-1]

    monkeypatch.setattr(pair, "state", state)
    lab = cast(Lab, SimpleNamespace(run_dir=tmp_path))
    st = pair.wait_state(lab, "primary", "ALONE", timeout=5)
    assert st == {"state": "WAITING", "last_takeover_s": 0.044}
