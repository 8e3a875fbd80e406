"""System tests need root (namespaces, taps, eBPF, VMs).

Without root they are skipped, except where COLO_REQUIRE_SYSTEM=1 (CI and
`make test`): there a skipped system test would hide a broken suite, so it fails.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from colo_lab.lab import LIVE


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


# When a system test fails, its lab is still up (fixtures tear down after the report),
# so its logs can go into the report: a failure in CI then shows what the orchestrators,
# proxies and QEMUs said, not only the assertion.
_TAIL_LINES = 40


def _tail(path: Path, n: int) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"(unreadable: {exc})"
    return "\n".join(lines[-n:])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    for lab in sorted(LIVE, key=lambda lab: lab.name):
        for path in lab.logs():
            if path.suffix == ".log":
                report.sections.append(
                    (f"lab {lab.name}: {path.name} (last {_TAIL_LINES} lines)",
                     _tail(path, _TAIL_LINES)))
