"""The nested Xen lab (docs/xen.md): what `colo-lab build --xen` made has COLO where
Debian's Xen has none.

Skipped unless COLO_XEN_TESTS=1 (`make test-xen`, which builds first)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from colo_lab.xen_build import (
    DM_PATH,
    LIBDIR,
    LIBXL,
    XenLab,
    cached_xen,
    check_dm_has_replication,
    check_libxl_has_colo,
)

pytestmark = pytest.mark.xen


@pytest.fixture(scope="module")
def build() -> XenLab:
    got = cached_xen()
    assert got is not None, "no Xen lab build in the cache: run `colo-lab build --xen`"
    return got


def _image_file(image: Path, path: str) -> bytes:
    """A file of the dom0's ext4 image, read by debugfs (no mount, no root needed)."""
    return subprocess.run(["debugfs", "-R", f"cat /{path}", str(image)], capture_output=True,
                          check=True, timeout=60).stdout


def test_libxl_in_the_dom0_is_built_with_colo(build: XenLab) -> None:
    check_libxl_has_colo(build.libxl)
    needed = subprocess.run(["readelf", "-d", str(build.libxl)], capture_output=True,
                            text=True, check=True).stdout
    assert "libnl-route-3.so.200" in needed and "libnl-3.so.200" in needed
    # The dom0 runs this library, not Debian's stub build (kept next to it as .debian).
    assert _image_file(build.rootfs, f"{LIBDIR}/{LIBXL}") == build.libxl.read_bytes()
    debian = _image_file(build.rootfs, f"{LIBDIR}/{LIBXL}.debian")
    assert b"COLO is not supported" in debian


def test_device_model_has_the_replication_driver(build: XenLab) -> None:
    check_dm_has_replication(build.device_model)
    assert _image_file(build.rootfs, DM_PATH) == build.device_model.read_bytes()
