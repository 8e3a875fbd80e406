"""Every proxy configuration the repository ships passes `colo-proxy check`: the example
files, the TOML and command lines in the docs and --help texts, the systemd unit, and the
command lines the lab and the test harness generate. An orchestrator example in the docs
passes the orchestrator's own loader."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from colo_lab import pair
from colo_lab.lab import TCG_COMPARE_TIMEOUT, Lab
from colo_lab.proxy_harness import ProxyPair
from colo_orch.core.config import parse as parse_orch_config
from colo_proxy.cli.main import build_parser, main
from tests.support.paths import REPO

CONTRIB = REPO / "contrib" / "colo-proxy.toml"
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
ROLES = ("primary", "secondary")
# Flags the test suites and benchmarks add to the harness's command line.
HARNESS_EXTRAS = [[], ["--compare-timeout", "0.5"], ["--on-crash", "open"], ["--uplink", ""],
                  ["--compare-timeout", str(TCG_COMPARE_TIMEOUT)], ["--busy-poll-us", "200"]]


def _check(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["check", *argv])
    out = capsys.readouterr()
    assert (rc, out.err) == (0, ""), argv
    assert ": ok\n" in out.out


def _shipped_tomls() -> list[Path]:
    """Every TOML file of the tree but the project's own, outside what tools make."""
    return sorted(p for p in REPO.rglob("*.toml") if p != REPO / "pyproject.toml"
                  and not any(part.startswith(".") or part in ("build", "node_modules")
                              for part in p.relative_to(REPO).parts))


def _toml_blocks() -> list[tuple[str, str]]:
    blocks = []
    for doc in DOCS:
        for i, m in enumerate(re.finditer(r"```toml\n(.*?)```", doc.read_text(), re.S)):
            blocks.append((f"{doc.name}#{i}", m.group(1)))
    return blocks


def _is_proxy_config(text: str) -> bool:
    return bool(re.search(r"^\[\[?(proxy|compare)[\].]", text, re.M))


def _example_commands() -> list[str]:
    """`colo-proxy primary|secondary|check ...` lines of the docs' code blocks and of the
    --help texts, without placeholders."""
    texts = [m.group(1) for doc in DOCS
             for m in re.finditer(r"```[a-z]*\n(.*?)```", doc.read_text(), re.S)]
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices
    assert isinstance(sub, dict)
    texts += [build_parser().epilog or ""] + [p.epilog or "" for p in sub.values()]
    found = []
    for text in texts:
        for line in text.splitlines():
            m = re.search(r"colo-proxy\s+(primary|secondary|check)\s[^#(]*", line)
            if m and "..." not in m.group(0):
                found.append(m.group(0).strip())
    return found


def _as_check(argv: list[str]) -> list[str]:
    """A service command line as `check` arguments: the role as --role, a config file named
    in it read from contrib/ (the docs' /etc/colo paths do not exist here)."""
    role, rest = argv[0], argv[1:]
    for i, a in enumerate(rest[:-1]):
        if a in ("-c", "--config"):
            rest[i + 1] = str(CONTRIB)
    return rest if role == "check" else ["--role", role, *rest]


@pytest.mark.parametrize("path", _shipped_tomls(), ids=lambda p: str(p.relative_to(REPO)))
def test_shipped_toml_files_pass(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if _is_proxy_config(path.read_text()):
        _check(["-c", str(path)], capsys)
    else:
        parse_orch_config(path.read_text(), str(path))


def test_every_key_is_shown_in_the_example_file_and_the_docs() -> None:
    from colo_proxy.service.settings import SPECS

    assert CONTRIB in _shipped_tomls()
    # Commented-out keys count: they show the key and its form (checked below).
    shown = set(re.findall(r"^#? ?(\w+) = ", CONTRIB.read_text(), re.M))
    assert set(SPECS) - shown == set()
    documented = set(re.findall(r"`(\w+)`", (REPO / "docs" / "PROXY.md").read_text()))
    assert set(SPECS) - documented == set()


def test_the_example_files_commented_out_settings_pass_too(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = re.sub(r"^# (\[\[[\w.]+\]\]|\w+ = .*)$", r"\1", CONTRIB.read_text(), flags=re.M)
    assert "\nmax_flows = " in text and "\n[[compare.pass_through]]" in text
    cfg = tmp_path / "all.toml"
    cfg.write_text(text)
    _check(["-c", str(cfg)], capsys)


@pytest.mark.parametrize(("where", "text"), _toml_blocks(), ids=lambda v: str(v)[:20])
def test_toml_in_the_docs_passes(where: str, text: str, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "example.toml"
    cfg.write_text(text)
    if _is_proxy_config(text):
        _check(["-c", str(cfg)], capsys)
    else:
        parse_orch_config(text, where)


def test_command_lines_in_the_docs_and_help_pass(capsys: pytest.CaptureFixture[str]) -> None:
    commands = _example_commands()
    assert len(commands) >= 6, commands
    for line in commands:
        _check(_as_check(shlex.split(line)[1:]), capsys)


def test_the_systemd_unit_passes(capsys: pytest.CaptureFixture[str]) -> None:
    unit = (REPO / "contrib" / "systemd" / "colo-proxy@.service").read_text()
    exec_start = re.search(r"^ExecStart=\S*colo-proxy (.*)$", unit, re.M)
    assert exec_start is not None
    for role in ROLES:
        _check(_as_check(shlex.split(exec_start.group(1).replace("%i", role))), capsys)


def test_the_labs_proxy_command_lines_pass(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    lab = Lab("cfgcheck")  # only names things
    for host in ROLES:
        for role in ROLES:
            argv = pair.proxy_command(lab, host, role)
            assert argv[1:3] == ["-m", "colo_proxy.cli.main"]
            _check(_as_check(argv[3:]), capsys)
    for extra in HARNESS_EXTRAS:
        harness = ProxyPair(lab, tmp_path, extra=extra)
        for role in ROLES:
            _check(_as_check(harness.argv(role)[3:]), capsys)
