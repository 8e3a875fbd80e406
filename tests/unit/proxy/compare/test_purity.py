"""The comparison core imports no I/O: only pure standard-library modules and itself.

The one exception is `_compiled`, imported by the package's __init__ before anything else:
it reads the sources once to decide whether the compiled build matches them (see its
docstring). No module the comparator runs imports it.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support.paths import REPO

CORE = REPO / "colo_proxy" / "compare"
PURE = {"__future__", "bisect", "collections", "dataclasses", "enum", "heapq", "ipaddress",
        "itertools", "struct", "typing"}
LOADER_ONLY = {"hashlib", "os", "pathlib", "sys"}


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            top = node.module.split(".")[0]
            out.add(node.module if top == "colo_proxy" else top)
    return out


def test_comparison_modules_import_only_pure_modules() -> None:
    for path in CORE.glob("*.py"):
        if path.name == "_compiled.py":
            continue
        own = {m for m in _imports(path) if m.startswith("colo_proxy")}
        assert all(m.startswith("colo_proxy.compare") for m in own), (path.name, own)
        assert _imports(path) - own <= PURE, (path.name, _imports(path) - own - PURE)
        if path.name != "__init__.py":
            assert "_compiled" not in path.read_text(), path.name


def test_the_build_loader_is_the_only_module_reading_files() -> None:
    assert _imports(CORE / "_compiled.py") <= PURE | LOADER_ONLY
