"""The README's main job: `colo-lab demo` runs end to end and exits 0."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from colo_lab.lab import Lab


def _orchestrator_logs(kept: Path, lines: int = 80) -> str:
    """The ends of both hosts' orchestrator logs (their proxies' lines among them), so that
    a demo failing in CI says what the hosts did: its own summary says only when."""
    out = []
    for log in sorted(kept.glob("*/orch-*.log")):
        tail = log.read_text(errors="replace").splitlines()[-lines:]
        out.append(f"--- {log.name} (last {len(tail)} lines)\n" + "\n".join(tail))
    return "\n".join(out) or f"(no orchestrator log kept in {kept})"


@pytest.mark.vm
@pytest.mark.timeout(90)  # 26 s here
def test_demo_runs_and_cleans_up(tmp_path: Path) -> None:
    name = f"demo{os.getpid() % 10000}"
    kept = Path(os.environ.get("COLO_LAB_KEEP_LOGS") or tmp_path)
    try:
        res = subprocess.run([sys.executable, "-m", "colo_lab.cli", "demo", "--name", name],
                             capture_output=True, text=True, timeout=600,
                             env={**os.environ, "COLO_LAB_KEEP_LOGS": str(kept)})
        assert res.returncode == 0, res.stderr[-3000:] + "\n" + _orchestrator_logs(kept)
        for step in ("1/7", "2/7", "3/7", "4/7", "5/7", "6/7", "7/7", "takeover_ms"):
            assert step in res.stderr
        assert "pair PROTECTED again" in res.stderr
    finally:
        Lab(name).down()
    assert Lab(name).leftovers() == []
