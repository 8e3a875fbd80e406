"""What contrib/ ships for two real hosts: the orchestrator's example configs load and
mirror each other, their proxy command lines pass `colo-proxy check`, and the systemd
units pass `systemd-analyze verify` with nothing to warn about."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from colo_orch.core.config import load
from colo_proxy.cli.main import main as proxy_main
from tests.support.paths import REPO

ORCH = {role: REPO / "contrib" / "orch" / f"web-{role}.toml" for role in ("primary", "secondary")}
UNITS = REPO / "contrib" / "systemd"
PROXY_EXAMPLE = REPO / "contrib" / "colo-proxy.toml"
BIN = Path(os.environ.get("VIRTUAL_ENV", "") or REPO / ".venv") / "bin"


def test_the_example_configs_mirror_each_other() -> None:
    pri, sec = (load(str(ORCH[r])) for r in ("primary", "secondary"))
    assert (pri.role, sec.role) == ("primary", "secondary") and pri.name == sec.name
    assert pri.peer_heartbeat == sec.heartbeat_listen and sec.peer_heartbeat == pri.heartbeat_listen
    assert pri.peer_incoming_uri == sec.incoming_uri and sec.peer_incoming_uri == pri.incoming_uri
    for c in (pri, sec):
        # Two real hosts: a lease file on one of them would decide nothing.
        assert c.arbiter == "etcd" and len(c.etcd_endpoints) == 3
        assert "-accel" in c.vm_command and "kvm" in c.vm_command
        assert c.vm_pidfile in c.vm_command and c.disks
        assert c.proxy_primary_command[-1] == c.proxy_socket == c.proxy_secondary_command[-1]
    # Everything else is the same on both hosts.
    same = ("vm_command", "disks", "proxy_primary_command", "proxy_secondary_command",
            "etcd_endpoints", "heartbeat_key_file", "qmp", "qmp_events", "timing")
    assert [getattr(pri, k) for k in same] == [getattr(sec, k) for k in same]


def test_the_proxy_commands_the_orchestrator_runs_pass_colo_proxy_check(
        capsys: pytest.CaptureFixture[str]) -> None:
    cfg = load(str(ORCH["primary"]))
    for argv in (cfg.proxy_primary_command, cfg.proxy_secondary_command):
        role, rest = argv[1], list(argv[2:])
        rest[rest.index("--config") + 1] = str(PROXY_EXAMPLE)  # /etc/colo is not here
        assert proxy_main(["check", "--role", role, *rest]) == 0
        assert capsys.readouterr().err == ""


def _verify(tmp_path: Path, name: str, instance: str,
            text: str | None = None) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        if os.environ.get("COLO_REQUIRE_SYSTEM"):
            pytest.fail("systemd-analyze is missing (Debian's systemd package)")
        pytest.skip("systemd-analyze not installed")
    # verify checks that ExecStart's program exists: point it at this checkout's.
    text = (UNITS / name).read_text() if text is None else text
    for prog in ("colo-orch", "colo-proxy"):
        text = text.replace(f"/usr/bin/{prog}", str(BIN / prog))
    unit = tmp_path / name.replace("@.", f"@{instance}.")
    unit.write_text(text)
    return subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True,
                          timeout=60, check=False)


@pytest.mark.parametrize(("name", "instance"), [("colo-orch@.service", "web"),
                                                ("colo-proxy@.service", "primary"),
                                                ("colo-proxy-cleanup.service", "")])
def test_the_units_verify_cleanly(tmp_path: Path, name: str, instance: str) -> None:
    out = _verify(tmp_path, name, instance)
    # Unknown keys and unparsable values are only warnings (exit 0): none may show.
    assert (out.returncode, out.stdout + out.stderr) == (0, ""), out


def test_a_broken_unit_does_not_verify_cleanly(tmp_path: Path) -> None:
    good = (UNITS / "colo-orch@.service").read_text()
    bad = good.replace("Restart=on-failure", "Restart=sometimes")
    assert bad != good
    out = _verify(tmp_path, "colo-orch@.service", "web", bad)
    assert "restart specifier" in out.stderr


def test_the_orchestrator_unit_restarts_crashes_but_not_config_errors() -> None:
    unit = (UNITS / "colo-orch@.service").read_text()
    keys = dict(re.findall(r"^(\w+)=(.*)$", unit, re.M))
    assert keys["Type"] == "notify" and keys["Restart"] == "on-failure"
    assert keys["RestartPreventExitStatus"] == "2"  # colo-orch's exit status for bad config
    assert keys["KillMode"] == "process"  # a restart of the orchestrator keeps the VM
    argv = shlex.split(keys["ExecStart"])
    assert argv[:3] == ["/usr/bin/colo-orch", "run", "--config"]
    assert argv[3] == "/etc/colo/%i.toml"
    proxy = dict(re.findall(r"^(\w+)=(.*)$", (UNITS / "colo-proxy@.service").read_text(), re.M))
    assert proxy["RestartPreventExitStatus"] == "2"
