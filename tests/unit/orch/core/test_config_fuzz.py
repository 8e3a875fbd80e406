"""colo_orch.core.config under fuzzing: any file gives a Config or a ConfigError that names
the problem, never another exception."""

from __future__ import annotations

import pytest

from colo_orch.core.config import ConfigError, parse


@pytest.mark.parametrize("text", [
    "a = " + "[" * 5000,  # was RecursionError out of tomllib
])
def test_what_crashed_the_loader_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError):
        parse(text)
