"""colo_proxy.service.settings under fuzzing: any file gives settings or a ConfigError that
names the file, never another exception."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given

from colo_proxy.service.settings import ConfigError, ProxySettings, load
from tests.support.strategies import toml_documents


@pytest.mark.parametrize("text", [
    b"a = " + b"[" * 5000,  # was RecursionError out of tomllib
    b'[proxy]\ntap = "t\xffp"\n',  # was UnicodeDecodeError out of tomllib.load
    # was ValueError out of int(): "²" is a digit to str.isdigit(), not to int()
    '[proxy]\npeer_mac = "02:c0:10:f0:00:02"\nmetrics_listen = "10.0.0.1:\u00b2"\n'.encode(),
])
def test_what_crashed_the_loader_is_a_config_error(tmp_path: Path, text: bytes) -> None:
    path = tmp_path / "proxy.toml"
    path.write_bytes(text)
    with pytest.raises(ConfigError, match=str(path)):
        load(path, {})


BASE = """
[proxy]
role = "primary"
tap = "tapP"
vm_mac = "52:54:00:c0:10:01"
peer_mac = "02:c0:10:f0:00:02"
metrics_listen = "10.0.0.1:7412"
queue = 0
[compare]
compare_timeout = 1.0
max_flows = 1000
other_policy = "compare"
"""


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("settings") / "proxy.toml"


@given(toml_documents(BASE))
def test_any_file_gives_settings_or_a_config_error(scratch: Path, text: str) -> None:
    scratch.write_text(text)
    try:
        loaded = load(scratch, {})
    except ConfigError as exc:
        assert str(exc).startswith(f"{scratch}: ")
        return
    assert isinstance(loaded, ProxySettings)
