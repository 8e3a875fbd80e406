"""Fixtures for the proxy's system tests: a stand-in lab and a proxy pair per test."""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from colo_lab.standin import Standin
from colo_proxy.harness import ProxyPair

_names = itertools.count()


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


def unique(prefix: str) -> str:
    return f"{prefix}{os.getpid() % 10000}{next(_names)}"[:10]


@pytest.fixture
def standin() -> Iterator[Standin]:
    lab = Standin(unique("px"))
    lab.down()
    try:
        lab.up()
        yield lab
    finally:
        lab.down()
        assert lab.leftovers() == []


def make_pair(lab: object, name: str, extra: list[str] | None = None) -> ProxyPair:
    return ProxyPair(lab, Path("/run/colo-proxy-test") / name, extra=extra)


@pytest.fixture
def pair(standin: Standin, request: pytest.FixtureRequest) -> Iterator[ProxyPair]:
    extra = getattr(request, "param", None) or []
    p = make_pair(standin, standin.name, extra)
    try:
        p.start()
        yield p
    finally:
        p.stop()
        p.cleanup()
        shutil.rmtree(p.run_dir, ignore_errors=True)
