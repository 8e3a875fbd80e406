"""System tests need root (namespaces, taps, eBPF, VMs).

Without root they are skipped, except where COLO_REQUIRE_SYSTEM=1 (CI and
`make test`): there a skipped system test would hide a broken suite, so it fails.
"""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.system)


@pytest.fixture(autouse=True)
def _need_root() -> None:
    if os.geteuid() != 0:
        if os.environ.get("COLO_REQUIRE_SYSTEM") == "1":
            pytest.fail("system tests need root (COLO_REQUIRE_SYSTEM=1 is set)")
        pytest.skip("system tests need root")
