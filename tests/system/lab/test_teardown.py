"""`colo-lab down` leaves nothing behind, also after the process that built the lab was killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from colo_lab import etcd_net, netns
from colo_lab.lab import Lab
from colo_lab.wait import wait_until

COLO_LAB = [sys.executable, "-m", "colo_lab.cli"]


@pytest.mark.vm  # both QEMUs start
def test_down_after_killed_up_leaves_nothing() -> None:
    name = f"kill{os.getpid() % 10000}"
    lab = Lab(name)
    lab.down()
    proc = subprocess.Popen([*COLO_LAB, "up", "--name", name], stderr=subprocess.PIPE)
    try:
        # Kill it once both QEMUs exist (their pid files are written at start).
        wait_until(lambda: (lab.run_dir / "svm.pid").exists() or proc.poll() is not None,
              120, "both VMs to start")
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert lab.leftovers(), "the killed run should have left its lab behind"
    finally:
        if proc.poll() is None:
            proc.kill()
    down = subprocess.run([*COLO_LAB, "down", "--name", name], capture_output=True, text=True)
    assert down.returncode == 0, down.stderr
    assert "removed namespace" in down.stdout
    assert lab.leftovers() == []
    assert netns.list_ns(f"colo-{name}-") == []
    assert not Path(f"/run/netns/colo-{name}-pri").exists()
    assert etcd_net.all_pids(lab) == []  # the members ran (started before the VMs)
    # No tap or bridge of the lab survives in the root namespace either.
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert "tapP" not in links and "tapS" not in links


@pytest.mark.host
def test_busy_namespace_is_one_clear_line() -> None:
    name = f"busy{os.getpid() % 10000}"
    ns = f"colo-{name}-client"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        res = subprocess.run([*COLO_LAB, "up", "--name", name], capture_output=True, text=True)
        assert res.returncode == 2
        lines = [ln for ln in res.stderr.splitlines() if "error" in ln]
        assert len(lines) == 1, res.stderr
        assert "busy" in lines[0] and f"colo-lab down --name {name}" in lines[0]
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
        Lab(name).down()


@pytest.mark.host
def test_missing_dependency_is_one_clear_line(tmp_path: Path) -> None:
    # A PATH without iproute2's `ip`: the lab must say what is missing and how to get it.
    env = dict(os.environ, PATH=str(tmp_path))
    res = subprocess.run([*COLO_LAB, "up", "--name", "nodeps"], capture_output=True, text=True,
                         env=env)
    assert res.returncode == 2
    errors = [ln for ln in res.stderr.splitlines() if "error" in ln]
    assert len(errors) == 1, res.stderr
    assert "missing dependency: 'ip'" in errors[0] and "apt-get install iproute2" in errors[0]
