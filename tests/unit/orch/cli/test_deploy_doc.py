"""docs/DEPLOY.md shows only commands that exist: every colo-orch, coloctl and colo-proxy
line of its shell blocks parses with the real command's parser, and the unit command line
it quotes is the one contrib/systemd ships."""

from __future__ import annotations

import argparse
import re
import shlex

import pytest

from colo_orch.cli import ctl, disk, fleet, libvirt, orch
from colo_proxy.cli.main import build_parser as proxy_parser
from tests.support.paths import REPO

DEPLOY = REPO / "docs" / "DEPLOY.md"


def _commands() -> list[list[str]]:
    """Our commands in DEPLOY.md's ```sh blocks (continued lines joined, comments cut)."""
    out = []
    for block in re.findall(r"```sh\n(.*?)```", DEPLOY.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.split()[:1] in (["colo-orch"], ["coloctl"], ["colo-proxy"]):
                out.append(shlex.split(re.split(r" #| >| \|| &&", line)[0]))
    return out


def _parser(argv: list[str]) -> tuple[argparse.ArgumentParser, list[str]]:
    if argv[0] == "colo-orch":
        return orch.build_parser(), argv[1:]
    if argv[0] == "colo-proxy":
        return proxy_parser(), argv[1:]
    sub = {"disk": disk.build_parser, "list": fleet.build_parser,
           "import-libvirt": libvirt.build_parser}
    for word, build in sub.items():
        if argv[1:2] == [word]:
            return build(), argv[2:]
    return ctl.build_parser(), argv[1:]


@pytest.mark.parametrize("argv", _commands(), ids=" ".join)
def test_every_command_of_deploy_md_parses(argv: list[str]) -> None:
    parser, args = _parser(argv)
    try:
        parser.parse_args(args)
    except SystemExit as exc:
        pytest.fail(f"{' '.join(argv)}: {parser.prog} refuses it (exit {exc.code})")


def test_deploy_md_shows_the_commands_it_walks_through() -> None:
    seen = {" ".join(a[:2]) for a in _commands()}
    for want in ("colo-orch check", "colo-orch firewall", "coloctl disk",
                 "coloctl --config", "colo-proxy check", "coloctl import-libvirt"):
        assert want in seen, f"DEPLOY.md shows no {want}"


def test_deploy_md_quotes_the_units_command_line() -> None:
    unit = (REPO / "contrib" / "systemd" / "colo-orch@.service").read_text()
    exec_start = re.search(r"^ExecStart=(.*)$", unit, re.M)
    assert exec_start is not None
    assert f"`{exec_start.group(1)}`" in DEPLOY.read_text()
