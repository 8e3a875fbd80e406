"""`colo-lab up --protected` leaves a protected pair for a person; `down` removes all of it."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

import pytest

from colo_lab import etcd_net, netns, pair
from colo_lab.lab import Lab
from colo_lab.proxy_harness import unique_name

COLO_LAB = [sys.executable, "-m", "colo_lab.cli"]


def _colo_lab(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*COLO_LAB, *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.vm
@pytest.mark.timeout(240)
def test_up_protected_then_status_then_down() -> None:
    lab = Lab(unique_name("up"))
    lab.down()
    try:
        up = _colo_lab("up", "--protected", "--proxy", "--name", lab.name)
        assert up.returncode == 0, up.stderr[-3000:]
        assert "primary: PROTECTED" in up.stderr and "secondary: PROTECTED" in up.stderr
        assert f"API {pair.api_url(lab, 'primary')}" in up.stdout
        assert f"API {pair.api_url(lab, 'secondary')}" in up.stdout

        st = _colo_lab("status", "--json", "--name", lab.name, timeout=30)
        assert st.returncode == 0, st.stderr
        status = json.loads(st.stdout)
        for role in ("primary", "secondary"):
            host = status["hosts"][role]
            assert host["orchestrator"]["state"] == "PROTECTED", host
            assert host["orchestrator"]["role"] == role
            assert all(link["up"] for r, link in host["links"].items()
                       if (role, r) != ("secondary", "uplink"))
        assert [m["running"] for m in status["etcd"]] == [True, True, True]

        # What `up` printed works as printed: the service, and coloctl on the primary.
        service = next(ln for ln in up.stdout.splitlines() if "service:" in ln)
        curl = shlex.split(service.split("service:", 1)[1])
        assert subprocess.run(curl, capture_output=True, text=True, timeout=30).stdout == "ok\n"
        example = next(ln for ln in up.stdout.splitlines() if "coloctl:" in ln)
        ctl = subprocess.run(shlex.split(example.split("coloctl:", 1)[1]), capture_output=True,
                             text=True, timeout=30)
        assert ctl.returncode == 0 and "PROTECTED" in ctl.stdout, ctl.stdout + ctl.stderr

        if pair.default_arbiter() == "etcd":
            # No test or lab relies on a lease file both "hosts" could read.
            assert not list(lab.run_dir.glob("*.lease"))
            assert "arbiter_path" not in (lab.run_dir / "orch-primary.toml").read_text()
    finally:
        down = _colo_lab("down", "--name", lab.name, timeout=60)
    assert down.returncode == 0, down.stderr
    # leftovers() names any process whose command line names the run directory: the
    # orchestrators (their configs), the proxies (their sockets), QEMU and etcd alike.
    assert lab.leftovers() == []
    assert netns.list_ns(lab.prefix) == []
    assert etcd_net.all_pids(lab) == []
