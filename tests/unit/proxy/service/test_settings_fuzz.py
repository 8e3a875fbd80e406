"""colo_proxy.service.settings under fuzzing: any file gives settings or a ConfigError that
names the file, never another exception."""

from __future__ import annotations

from pathlib import Path

import pytest

from colo_proxy.service.settings import ConfigError, load


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
