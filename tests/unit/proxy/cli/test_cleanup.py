"""`colo-proxy cleanup` never removes what a live proxy holds its VM's output with."""

from __future__ import annotations

from pathlib import Path

import pytest

from colo_proxy.cli.service import main
from colo_proxy.service import instance_lock


def test_cleanup_is_refused_while_the_instance_runs(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    with instance_lock.hold("web1", tmp_path):
        assert instance_lock.running(tmp_path)[0][0] == "web1"
        # Refused before anything is touched: this test runs without root, so reaching
        # the kernel cleanup would fail differently.
        assert main(["cleanup", "--lock-dir", str(tmp_path)]) == 1
        assert main(["cleanup", "--instance", "web1", "--lock-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "cleanup refused: a proxy still runs: web1 (pid" in err
    assert instance_lock.running(tmp_path) == []  # a dead holder's file holds nothing


def test_cleanup_checks_its_flags_as_the_service_does(capsys: pytest.CaptureFixture[str]) -> None:
    # An empty instance would otherwise name no rule, or every rule's tag prefix.
    assert main(["cleanup", "--instance", ""]) == 2
    assert capsys.readouterr().err == (
        "colo-proxy cleanup: error: command line: --instance: '' is not an instance name; use "
        "1-64 letters, digits, '_', '.' or '-', not starting with '.' (it names "
        "LOCK_DIR/INSTANCE.lock and tags the iptables rules), e.g. --instance web\n")
    assert main(["cleanup", "--lock-dir", "locks"]) == 2
    assert "command line: --lock-dir: 'locks' is not an absolute path" in capsys.readouterr().err
