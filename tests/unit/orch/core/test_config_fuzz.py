"""colo_orch.core.config under fuzzing: any file gives a Config or a ConfigError that names
the problem, never another exception."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given

from colo_orch.core.config import ConfigError, load, parse
from tests.support.api import CONFIG
from tests.support.strategies import toml_documents


@pytest.mark.parametrize("text", [
    "a = " + "[" * 5000,  # was RecursionError out of tomllib
    CONFIG + "[timing]\nloop_wait = " + "9" * 400,  # was OverflowError out of float()
    # was ValueError out of int(): "²" is a digit to str.isdigit(), not to int()
    CONFIG.replace('"127.0.0.1:7410"', '"127.0.0.1:\u00b2"'),
    # were accepted with a final newline (a regex's `$`), which reaches QEMU's command
    # line and, on Xen, a shell command
    CONFIG.replace('"tcp:127.0.0.1:4444"', '"tcp:127.0.0.1:4444\\n"'),
    CONFIG + 'arbiter = "etcd"\netcd_endpoints = ["http://10.0.0.5:2379\\n"]\n',
    CONFIG + 'arbiter = "etcd"\netcd_endpoints = ["http://10.0.0.5:2379"]\n'
             'etcd_prefix = "/colo\\n"\n',
    CONFIG + '[[disks]]\nid = "d\\n"\nimage = "/a"\nactive = "/b"\nhidden = "/c"\n',
])
def test_what_crashed_the_loader_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError):
        parse(text)


def test_a_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    # was UnicodeDecodeError out of Path.read_text
    path = tmp_path / "orch.toml"
    path.write_bytes(b'name = "w\xffeb"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load(path)


@given(toml_documents(CONFIG))
def test_any_document_gives_a_config_or_a_config_error(text: str) -> None:
    try:
        cfg = parse(text, "orch.toml")
    except ConfigError as exc:
        assert str(exc).startswith("orch.toml: ")
        return
    # What reaches QEMU's command line or a shell stays on one line.
    for value in (cfg.incoming_uri, cfg.peer_incoming_uri, cfg.heartbeat_listen,
                  cfg.peer_heartbeat, *cfg.etcd_endpoints):
        assert value.isprintable(), value
