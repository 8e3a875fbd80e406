"""Each room of colo_orch imports only what its package docstring allows.

The core decides and imports no I/O, no backend, daemon or CLI: the decisions are then
testable from a snapshot alone, and a new backend cannot change them. The one file the
core reads is the configuration, in `config.load`. The daemon knows backends only by
their interface, backends do not know each other, and nothing imports the test bed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support.paths import REPO as ROOT

CORE = ROOT / "colo_orch" / "core"
PURE = {"__future__", "collections", "dataclasses", "enum", "hashlib", "hmac", "json", "re", "tomllib", "typing"}
READS_ITS_FILE = {"config.py": {"pathlib"}}
OUTSIDE = ("colo_orch.backends", "colo_orch.daemon", "colo_orch.cli")
NEVER = {
    "colo_orch": ("colo_lab",),
    "colo_orch/daemon": ("colo_lab", "colo_orch.cli", "colo_orch.backends.qemu",
                         "colo_orch.backends.xen"),
    "colo_orch/backends": ("colo_lab", "colo_orch.cli", "colo_orch.daemon"),
    "colo_orch/backends/qemu": ("colo_orch.backends.xen",),
    "colo_orch/backends/xen": ("colo_orch.backends.qemu",),
}


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert not node.level, f"{path.name}: use absolute imports"
            assert node.module
            out.add(node.module)
    return out


def test_core_modules_import_only_pure_modules_and_the_core() -> None:
    paths = sorted(CORE.glob("*.py"))
    assert {p.name for p in paths} >= {"config.py", "decide.py", "disks.py", "state.py"}
    for path in paths:
        mods = _imports(path)
        own = {m for m in mods if m.split(".")[0] == "colo_orch"}
        assert not {m for m in own if m.startswith(OUTSIDE)}, path.name
        assert all(m.startswith("colo_orch.core") for m in own), (path.name, own)
        others = {m.split(".")[0] for m in mods - own}
        assert others <= PURE | READS_ITS_FILE.get(path.name, set()), (path.name, others - PURE)


@pytest.mark.parametrize("room", sorted(NEVER))
def test_rooms_do_not_import_what_they_must_not(room: str) -> None:
    paths = sorted((ROOT / room).rglob("*.py"))
    assert paths
    for path in paths:
        bad = {m for m in _imports(path) if m.startswith(NEVER[room])}
        assert not bad, (str(path.relative_to(ROOT)), bad)
