"""What each room of the proxy may import.

`wire` (codecs) and `compare` (the comparison core) are pure: standard-library modules
without I/O and their own room, never `kernel` or `service`. Only `kernel` touches the
kernel: bcc, pyroute2, AF_PACKET and netlink sockets.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support.paths import REPO

PROXY = REPO / "colo_proxy"
PURE = {"__future__", "bisect", "collections", "dataclasses", "enum", "hashlib", "hmac",
        "heapq", "ipaddress", "itertools", "json", "struct", "typing"}
# compare/_compiled.py reads the sources to pick the compiled build (test_purity.py there).
LOADERS = {PROXY / "compare" / "_compiled.py"}
KERNEL_LIBRARIES = {"bcc", "pyroute2"}
KERNEL_SOCKETS = {"AF_PACKET", "AF_NETLINK"}


def _imports(path: Path) -> set[str]:
    """Top-level modules, and whole names for our own (`colo_proxy.wire.offset`)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name if a.name.startswith("colo_proxy") else a.name.split(".")[0]
                    for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            top = node.module.split(".")[0]
            out.add(node.module if top == "colo_proxy" else top)
    return out


def _modules(room: str) -> list[Path]:
    return sorted((PROXY / room).rglob("*.py"))


@pytest.mark.parametrize("room", ["wire", "compare"])
def test_pure_rooms_import_no_io_and_nothing_of_kernel_or_service(room: str) -> None:
    for path in _modules(room):
        if path in LOADERS:
            continue
        own = {m for m in _imports(path) if m.startswith("colo_proxy")}
        assert all(m.startswith(f"colo_proxy.{room}") for m in own), (path.name, own)
        assert _imports(path) - own <= PURE, (path.name, _imports(path) - own - PURE)


def test_only_the_kernel_room_touches_the_kernel() -> None:
    outside = [p for p in PROXY.rglob("*.py") if (PROXY / "kernel") not in p.parents]
    assert outside
    for path in outside:
        assert not _imports(path) & KERNEL_LIBRARIES, path
        names = {n.attr for n in ast.walk(ast.parse(path.read_text()))
                 if isinstance(n, ast.Attribute)}
        assert not names & KERNEL_SOCKETS, path
