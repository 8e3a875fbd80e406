"""Where the lab keeps its cached builds and its per-run state.

Builds (the patched QEMU, the guest kernel and initramfs) are slow and shared by
every lab run on a machine, so they live in one cache outside the repository,
keyed by their inputs. Per-run state (sockets, serial logs, pid files, disk
images) lives in a run directory that `colo-lab down` removes.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def cache_dir() -> Path:
    """The build cache: $COLO_CACHE, else /var/cache/colo-lab (root) or ~/.cache/colo-lab."""
    env = os.environ.get("COLO_CACHE")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/cache/colo-lab")
    return Path.home() / ".cache" / "colo-lab"


def run_root() -> Path:
    """Parent of all lab run directories: $COLO_RUN_DIR, else /run/colo-lab."""
    return Path(os.environ.get("COLO_RUN_DIR", "/run/colo-lab"))


KEEP_BUILDS = 3


def prune_cache(prefix: str, keep: Path) -> None:
    """Remove older builds of one kind, all but the KEEP_BUILDS used last (`keep` among
    them): two checkouts of different inputs on one machine (a branch that changes the
    QEMU patch, and main) would otherwise delete each other's build, each rebuilding it."""
    builds = [b for b in cache_dir().glob(prefix + "*")
              if b.is_dir() and not b.name.endswith(".work") and b != keep]
    builds.sort(key=lambda b: b.stat().st_mtime, reverse=True)
    for old in builds[KEEP_BUILDS - 1:]:
        shutil.rmtree(old, ignore_errors=True)


def touch_build(path: Path) -> None:
    """Mark a cached build as just used (prune_cache keeps the builds used last)."""
    try:
        os.utime(path)
    except OSError:
        pass  # pruned meanwhile: the caller builds it again under the lock


def point_current(pointer: str, build: Path) -> None:
    """Make the cache's symlink `pointer` name `build` (a sibling), replaced atomically so
    that a reader finds the old build or the new one, never none."""
    root = build.parent
    tmp = root / f".{pointer}.tmp"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(build.name)
    os.replace(tmp, root / pointer)
