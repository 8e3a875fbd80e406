"""`colo-lab` command-line behaviour that needs no root."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from colo_lab.cli import build_parser, main
from colo_lab.errors import LabError
from colo_lab.lab import Lab

CLI = [sys.executable, "-m", "colo_lab.cli"]


def test_unknown_subcommand_is_one_line() -> None:
    res = subprocess.run([*CLI, "frobnicate"], capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1
    assert "unknown command 'frobnicate'" in res.stderr and "up, down, status" in res.stderr


def test_help_has_examples() -> None:
    text = build_parser().format_help()
    assert "examples:" in text and "colo-lab up" in text and "colo-lab down" in text


@pytest.mark.parametrize("name", ["", "UPPER", "has-dash", "waytoolongname"])
def test_bad_lab_name_says_the_fix(name: str) -> None:
    with pytest.raises(LabError, match="1-10 lower-case letters or digits"):
        Lab(name)


def test_status_of_absent_lab(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--name", "absent0"]) == 0
    assert "down" in capsys.readouterr().out


def test_qemu_path_reads_the_cache_and_builds_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("COLO_CACHE", str(tmp_path))
    assert main(["qemu-path"]) == 1
    assert "'colo-lab build' builds it" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    build = tmp_path / "qemu-k1"
    build.mkdir()
    (build / "qemu-system-x86_64").touch()
    (tmp_path / "qemu-current").symlink_to(build)
    assert main(["qemu-path"]) == 0
    assert capsys.readouterr().out == f"{tmp_path / 'qemu-current' / 'qemu-system-x86_64'}\n"


@pytest.mark.parametrize(("argv", "says"), [
    (["up", "--proxy"], "--proxy needs --protected"),
    (["up", "--no-vms", "--protected"], "--no-vms starts no VMs"),
    (["up", "--protected", "--secondary", "standalone"], "leave out --secondary"),
    (["up", "--protected", "--remus"], "add --protected --proxy"),
    (["up", "--qemu-compare", "--protected"], "protects the pair by QEMU alone"),
    (["up", "--qemu-compare", "--no-vms"], "protects the pair by QEMU alone"),
    (["up", "--qemu-compare", "--secondary", "standalone"], "leave out --secondary"),
    (["up", "--xen", "--protected", "--proxy"], "--xen takes --protected only"),
    (["up", "--xen", "--disk"], "--xen takes --protected only"),
])
def test_up_refuses_options_that_do_not_go_together(
        argv: list[str], says: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*argv, "--name", "absent0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err


def test_chaos_help_has_examples_kinds_and_invariants() -> None:
    res = subprocess.run([*CLI, "chaos", "--help"], capture_output=True, text=True)
    assert res.returncode == 0
    for part in ("colo-lab chaos --faults 8 --seed 1", "host-death", "cut-control",
                 "no acknowledged write lost", "Exit status"):
        assert part in res.stdout


@pytest.mark.parametrize(("args", "says"), [
    (["--workloads", "kv,bogus"], "no workload ['bogus']"),
    (["--kinds", "kill-everything"], "no fault kind ['kill-everything']"),
    (["--faults", "0"], "--faults must be at least 1"),
])
def test_chaos_refuses_bad_arguments_before_touching_anything(
        args: list[str], says: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["chaos", "--name", "absent0", *args]) == 2
    assert says in capsys.readouterr().err


def test_chaos_check_reads_a_history_and_exits_1_on_a_violation(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = ['{"type":"campaign","seed":3,"t":0}', '{"type":"protected","t":1}',
             '{"type":"invoke","proc":"kv0","op":0,"f":"put","key":"k","value":"v","t":2}',
             '{"type":"ok","proc":"kv0","op":0,"f":"put","conn":1,"t":2.1}',
             '{"type":"invoke","proc":"kv0","op":1,"f":"get","key":"k","t":3}',
             '{"type":"ok","proc":"kv0","op":1,"f":"get","conn":1,"absent":true,"t":3.1}']
    path = tmp_path / "history.jsonl"
    path.write_text("\n".join(lines[:4]) + "\n")
    assert main(["chaos", "--check", str(path)]) == 0
    path.write_text("\n".join(lines) + "\n")
    assert main(["chaos", "--check", str(path)]) == 1
    assert "kv-lost-write" in capsys.readouterr().out
