"""The build cache keeps the builds used last, so that two checkouts share it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from colo_lab.paths import KEEP_BUILDS, prune_cache, touch_build


def test_prune_keeps_the_builds_used_last(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    monkeypatch.setenv("COLO_CACHE", str(tmp_path))
    builds = [tmp_path / f"qemu-{i}" for i in range(5)]
    for i, b in enumerate(builds):
        b.mkdir()
        os.utime(b, (1000.0 + i, 1000.0 + i))
    (tmp_path / "qemu-9.work").mkdir()  # a build under way is never pruned
    touch_build(builds[0])  # main's build, just used by a lab, outlives newer builds
    prune_cache("qemu-", keep=builds[4])
    left = sorted(p.name for p in tmp_path.iterdir())
    assert KEEP_BUILDS == 3
    assert left == ["qemu-0", "qemu-3", "qemu-4", "qemu-9.work"]
