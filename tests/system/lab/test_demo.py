"""The README's main job: `colo-lab demo` runs end to end and exits 0."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from colo_lab.lab import Lab


@pytest.mark.vm
@pytest.mark.timeout(90)  # 26 s here
def test_demo_runs_and_cleans_up() -> None:
    name = f"demo{os.getpid() % 10000}"
    try:
        res = subprocess.run([sys.executable, "-m", "colo_lab.cli", "demo", "--name", name],
                             capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        for step in ("1/7", "2/7", "3/7", "4/7", "5/7", "6/7", "7/7", "takeover_ms"):
            assert step in res.stderr
        assert "pair PROTECTED again" in res.stderr
    finally:
        Lab(name).down()
    assert Lab(name).leftovers() == []
