"""Where the fast path's compiled module lives, and whether it matches these sources.

``scripts/build-fastpath`` compiles ``fastpath.c`` with cffi (API mode) into
``build/fastpath-cffi/<key>/``, where ``key`` hashes the C sources and the interpreter's
ABI, as ``colo_proxy/compare/_compiled`` does for the comparator: an edited source is
never served by a stale binary; without a build the proxy runs its pure-Python path.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCES = ("fastpath.h", "fastpath.c")
MODULE = "_colo_fastpath"


def source_key() -> str:
    h = hashlib.sha256(sys.implementation.cache_tag.encode())
    for name in SOURCES:
        h.update(name.encode() + b"\0" + (HERE / name).read_bytes() + b"\0")
    return h.hexdigest()[:16]


def build_root() -> Path:
    return HERE.parents[1] / "build" / "fastpath-cffi"


def find() -> Path | None:
    """The compiled module matching the current sources, or None."""
    try:
        found = sorted((build_root() / source_key()).glob(f"{MODULE}.*.so"))
    except OSError:
        return None
    return found[0] if found else None
