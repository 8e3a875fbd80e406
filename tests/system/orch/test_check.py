"""`colo-orch check`: names what is wrong with a config or host, and runs the COLO smoke check."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CHECK = [sys.executable, "-m", "colo_orch.cli.orch", "check"]


@pytest.mark.host
def test_host_checks_pass_here() -> None:
    res = subprocess.run(CHECK, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    for what in ("BPF in the kernel", "bcc and kernel headers", "bridge netfilter", "QEMU binary"):
        assert f"ok   {what}" in res.stdout


@pytest.mark.host
def test_bad_config_is_named_with_its_fix(tmp_path: Path) -> None:
    cfg = tmp_path / "web1.toml"
    cfg.write_text('name = "web1"\nrole = "leader"\nqmp = "/a"\nqmp_events = "/b"\n'
                   'heartbeat_listen = "10.0.0.1:7410"\npeer_heartbeat = "10.0.0.2:7410"\n'
                   'incoming_uri = "tcp:10.0.0.1:4444"\n'
                   'peer_incoming_uri = "tcp:10.0.0.2:4444"\n'
                   'heartbeat_key_file = "/etc/colo/web.key"\n'
                   'on_fence = ["true"]\n')
    res = subprocess.run([*CHECK, "--config", str(cfg)], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 1
    assert (f"FAIL config: {cfg}: role: 'leader' is not a role; use \"primary\" or "
            '"secondary"') in res.stdout, res.stdout


@pytest.mark.vm  # the smoke check runs the two-VM lab
def test_smoke_check_says_this_qemu_can_do_colo() -> None:
    res = subprocess.run([*CHECK, "--smoke"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "ok   QEMU can run COLO on this host" in res.stdout
