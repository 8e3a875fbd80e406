"""Where the compiled build of this package lives, and whether it matches these sources.

The comparator is plain Python and always works as such. ``scripts/build-compare`` compiles
the same modules with mypyc (no other source: mypyc translates the typed Python to C) into
``build/compare-mypyc/<key>/``, where ``key`` hashes the sources and the interpreter. The
package's ``__init__`` puts that folder first on the package ``__path__`` only when its key
is the key of the sources being imported, so an edited source is never shadowed by a stale
binary: it simply runs interpreted until the next build. ``COLO_COMPARE_PURE=1`` forces
the interpreted modules (tests run both).

This module reads files at import time, once; nothing in the comparison itself does I/O.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# The modules mypyc compiles. Not __init__ (it chooses) and not this module.
MODULES: tuple[str, ...] = (
    "_flows",
    "_stream",
    "comparator",
    "config",
    "events",
    "parse",
)
GROUP = "colo_proxy.compare._native"  # mypyc's shared runtime library for the group


def source_key() -> str:
    """A digest of the compiled modules' sources and of the interpreter's ABI."""
    h = hashlib.sha256(sys.implementation.cache_tag.encode())
    for name in MODULES:
        h.update(name.encode() + b"\0" + (HERE / f"{name}.py").read_bytes() + b"\0")
    return h.hexdigest()[:16]


def build_root() -> Path:
    """``COLO_COMPARE_BUILD`` or ``build/compare-mypyc`` at the top of the source tree."""
    env = os.environ.get("COLO_COMPARE_BUILD")
    return Path(env) if env else HERE.parents[1] / "build" / "compare-mypyc"


def package_dir(key: str) -> Path:
    """The folder holding the compiled ``colo_proxy.compare`` modules for ``key``."""
    return build_root() / key / "colo_proxy" / "compare"


def find() -> Path | None:
    """The compiled package folder matching the current sources, or None."""
    if os.environ.get("COLO_COMPARE_PURE", "") not in ("", "0"):
        return None
    try:
        folder = package_dir(source_key())
        names = {p.name.split(".", 1)[0] for p in folder.glob("*.so")}
    except OSError:
        return None
    if not set(MODULES) <= names or GROUP.rsplit(".", 1)[1] + "__mypyc" not in names:
        return None
    return folder
