"""System tests need root (namespaces, taps, eBPF, VMs).

Without root they are skipped, except where COLO_REQUIRE_SYSTEM=1 (CI and
`make test`): there a skipped system test would hide a broken suite, so it fails.

Each system test is of one kind, a marker that says what it needs and about how long it
takes: `vm` (the lab's two QEMU VMs), `standin` (the proxy pair on stand-in VMs), `bpf`
(eBPF programs on crafted frames), `host` (root and host tools only) or `xen` (the nested
Xen lab; skipped unless COLO_XEN_TESTS=1, which `make test-xen` sets). Tests that use the
`lab` or `standin` fixture get theirs here; the others are marked in their modules.

The two-VM lab: a test takes the `lab` fixture and says which lab with the `lab` marker
(on its module, on itself, or both: the closer one wins per field), with LabKind's fields
and `spoils=True` for a test that leaves the lab unusable. The tests of a module share a
lab: it is booted when a test first asks for it and kept while the next test asks for the
same kind and finds it as it was booted (both orchestrators PROTECTED in their first roles,
the disks equal). A test that killed VMs leaves the orchestrators to re-protect the pair;
the next test waits for that. The lab is removed after a test that spoils it or fails, when
a test asks for another kind, and at the end of the module. A lab without orchestrators
serves one test only.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from colo_lab import pair
from colo_lab.errors import LabError
from colo_lab.lab import LIVE, Lab
from colo_lab.proxy_harness import unique_name
from colo_lab.wait import wait_until
from colo_orch.cli.disk import main as disk_main

KINDS = ("vm", "standin", "bpf", "host", "xen")
# How long a shared lab may take to be PROTECTED again after a test killed its VMs (1 to 5 s
# here); longer, and the next test boots a lab of its own.
REPROTECT_S = 30.0
_FAILED = pytest.StashKey[bool]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = os.path.dirname(__file__)
    for item in items:
        if not str(item.fspath).startswith(here):
            continue
        item.add_marker(pytest.mark.system)
        fixtures = getattr(item, "fixturenames", ())
        if "lab" in fixtures:
            item.add_marker(pytest.mark.vm)
        if "standin" in fixtures:
            item.add_marker(pytest.mark.standin)
        # The nested Xen lab needs a 15-minute build and minutes per boot: only when asked.
        if item.get_closest_marker("xen") is not None and os.environ.get("COLO_XEN_TESTS") != "1":
            item.add_marker(pytest.mark.skip(
                reason="the nested Xen lab's tests run with `make test-xen` (COLO_XEN_TESTS=1)"))
        kinds = [k for k in KINDS if item.get_closest_marker(k) is not None]
        if len(kinds) != 1:
            raise pytest.UsageError(
                f"{item.nodeid}: a system test has exactly one of the markers {KINDS}, "
                f"not {kinds}: mark its module or the test (tests/system/conftest.py)")


@pytest.fixture(autouse=True)
def _need_root() -> None:
    if os.geteuid() != 0:
        if os.environ.get("COLO_REQUIRE_SYSTEM") == "1":
            pytest.fail("system tests need root (COLO_REQUIRE_SYSTEM=1 is set)")
        pytest.skip("system tests need root")


# The two-VM lab ---------------------------------------------------------------------------
@dataclass(frozen=True)
class LabKind:
    """What a test needs of the two-VM lab."""

    secondary: str = "incoming"  # Lab.up's: "standalone" boots the SVM on its own
    orchestrators: bool = True  # both colo-orch started and the pair PROTECTED
    proxy: bool = False  # the orchestrators run colo-proxy
    disk: bool = False  # a replicated disk
    extra: str = ""  # more lines for both orchestrators' configs


def _lab_marker(item: pytest.Item) -> tuple[LabKind, bool]:
    fields: dict[str, Any] = {}
    for mark in reversed(list(item.iter_markers("lab"))):  # the closest last: it wins
        fields.update(mark.kwargs)
    spoils = bool(fields.pop("spoils", False))
    return LabKind(**fields), spoils


def _boot(kind: LabKind) -> Lab:
    lab = Lab(unique_name("vm"))
    lab.down()
    try:
        lab.up(secondary=kind.secondary, disk=kind.disk)
        if kind.orchestrators:
            pair.protect(lab, proxy=kind.proxy, extra=kind.extra)
    except BaseException:
        lab.down()
        raise
    return lab


def _as_booted(lab: Lab, kind: LabKind) -> bool:
    """The lab is PROTECTED again in its first roles, its disks equal."""
    try:
        pri = pair.wait_state(lab, "primary", "PROTECTED", REPROTECT_S)
        sec = pair.wait_state(lab, "secondary", "PROTECTED", 30)
        if (pri.get("role"), sec.get("role")) != ("primary", "secondary"):
            return False
        for a, b in zip(lab.disks("primary"), lab.disks("secondary"), strict=True):
            wait_until(lambda a=a, b=b: disk_main(["verify", "--settle", "1", a.image,
                                                   b.image]) == 0, 30, "equal disks")
    except LabError:
        return False
    return True


class LabPool:
    """The two-VM lab a module's tests share: one at a time."""

    def __init__(self) -> None:
        self.kind: LabKind | None = None
        self.lab: Lab | None = None

    def get(self, kind: LabKind) -> Lab:
        if self.lab is not None and not (kind == self.kind and kind.orchestrators
                                         and _as_booted(self.lab, kind)):
            self.release()
        if self.lab is None:
            self.lab, self.kind = _boot(kind), kind
        return self.lab

    def release(self) -> None:
        lab, self.lab, self.kind = self.lab, None, None
        if lab is not None:
            lab.down()
            assert lab.leftovers() == [], f"lab {lab.name} left behind: {lab.leftovers()}"


@pytest.fixture(scope="module")
def _lab_pool() -> Iterator[LabPool]:
    pool = LabPool()
    yield pool
    pool.release()


@pytest.fixture
def lab(request: pytest.FixtureRequest, _need_root: None, _lab_pool: LabPool) -> Iterator[Lab]:
    """The two-VM lab this test's `lab` markers ask for (see the module docstring)."""
    kind, spoils = _lab_marker(request.node)
    lab = _lab_pool.get(kind)
    yield lab
    if spoils or not kind.orchestrators or request.node.stash.get(_FAILED, False):
        _lab_pool.release()


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
    if report.failed:
        item.stash[_FAILED] = True  # its lab is not shared any further
    if report.when != "call" or not report.failed:
        return
    for lab in sorted(LIVE, key=lambda lab: lab.name):
        for path in lab.logs():
            if path.suffix == ".log":
                report.sections.append(
                    (f"lab {lab.name}: {path.name} (last {_TAIL_LINES} lines)",
                     _tail(path, _TAIL_LINES)))
