"""Fixtures for the proxy's system tests: a stand-in lab and a proxy pair per test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from colo_lab.proxy_harness import RUN_ROOT, ProxyPair, unique_name
from colo_lab.standin import Standin


def _bcc_ok() -> bool:
    try:
        import bcc  # noqa: F401
    except ImportError:
        return False
    return Path(f"/lib/modules/{os.uname().release}/build").exists()


@pytest.fixture(autouse=True)
def _need_bcc() -> None:
    if os.geteuid() == 0 and not _bcc_ok():
        pytest.skip("bcc or kernel headers (/lib/modules/$(uname -r)/build) unavailable")


@pytest.fixture
def standin() -> Iterator[Standin]:
    lab = Standin(unique_name("px"))
    lab.down()
    try:
        lab.up()
        yield lab
    finally:
        lab.down()
        assert lab.leftovers() == []


@pytest.fixture
def pair(standin: Standin, request: pytest.FixtureRequest) -> Iterator[ProxyPair]:
    extra = getattr(request, "param", None) or []
    with ProxyPair(standin, RUN_ROOT / standin.name, extra=extra).running() as p:
        yield p
