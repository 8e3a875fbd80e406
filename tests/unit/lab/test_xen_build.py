"""The Xen lab builder's pure parts: which source version, the cache key, the checks of
the built libxl, the progress lines, and the cache pointer read by `up --xen`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from colo_lab import xen_build
from colo_lab.errors import LabError

MADISON = """\
       xen | 4.17.5+72-g01140da4e8-1 | http://deb.debian.org/debian bookworm/main Sources
       xen | 4.17.7+13-g2445b30a44-0+deb12u1 | http://deb.debian.org/debian-security \
bookworm-security/main Sources
"""


def test_source_is_the_suites_main_not_the_security_archive() -> None:
    # debootstrap of the suite installs main's Xen into the dom0: the libxl drop-in must
    # be built from that version, not the newer one in bookworm-security.
    assert xen_build.source_in_suite(MADISON, "bookworm") == "4.17.5+72-g01140da4e8-1"
    assert xen_build.source_in_suite(MADISON, "trixie") is None


def test_key_changes_with_every_version_input() -> None:
    base = xen_build.build_key("4.17.5-1", "7.2-18")
    assert base == xen_build.build_key("4.17.5-1", "7.2-18")
    assert len({base, xen_build.build_key("4.17.5-2", "7.2-18"),
                xen_build.build_key("4.17.5-1", "7.2-19")}) == 3


def test_key_changes_with_the_dom0_init(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    base = xen_build.build_key("4.17.5-1", "7.2-18")
    init = tmp_path / "init.sh"
    init.write_bytes(xen_build.DOM0_INIT.read_bytes() + b"# changed\n")
    monkeypatch.setattr(xen_build, "DOM0_INIT", init)
    assert xen_build.build_key("4.17.5-1", "7.2-18") != base


def test_libxl_check_tells_colo_from_the_stub(tmp_path: Path) -> None:
    colo = tmp_path / "colo.so"
    colo.write_bytes(b"\x7fELF...colo_save_device_qdisk\0colo_proxy_setup\0")
    xen_build.check_libxl_has_colo(colo)
    stub = tmp_path / "stub.so"
    stub.write_bytes(b"\x7fELF...%s:Domain %d:COLO is not supported\0")
    with pytest.raises(LabError, match="without COLO"):
        xen_build.check_libxl_has_colo(stub)


def test_cached_xen_needs_a_finished_build(monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
    monkeypatch.setenv("COLO_CACHE", str(tmp_path))
    assert xen_build.cached_xen() is None
    build = tmp_path / "xen-k1"
    build.mkdir()
    (tmp_path / "xen-current").symlink_to(build.name)
    assert xen_build.cached_xen() is None  # a build without DONE was interrupted
    (build / "DONE").write_text("1\n")
    lab = xen_build.cached_xen()
    assert lab is not None and lab.rootfs == build / "dom0.img"


def test_a_libxl_patch_rekeys_libxl_and_the_dom0_not_the_device_model(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    before = (xen_build.libxl_key("4.17.5-1"), xen_build.dm_key("7.2-18"),
              xen_build.build_key("4.17.5-1", "7.2-18"))
    patch = tmp_path / "more.patch"
    patch.write_text("--- a/x\n+++ b/x\n")
    monkeypatch.setattr(xen_build, "XEN_PATCHES", (*xen_build.XEN_PATCHES, patch))
    after = (xen_build.libxl_key("4.17.5-1"), xen_build.dm_key("7.2-18"),
             xen_build.build_key("4.17.5-1", "7.2-18"))
    assert after[0] != before[0] and after[2] != before[2]
    assert after[1] == before[1]  # eight minutes of device model not compiled again
    assert xen_build.dm_key("7.2-19") != before[1]


# What a device model patch may touch: QEMU code that only the Xen device model runs (in
# pc.c, only xen_load_linux(), in pc_piix.c only the xenfv machine types, in colo.c only
# the xen-colo-do-checkpoint command, which their explanations name), and the PCI IDE
# state's load only, which only libxl's COLO secondary makes into a device that has run.
DM_PATHS = ("migration/savevm.c", "hw/i386/pc.c", "hw/i386/xen/", "hw/i386/pc_piix.c",
            "migration/colo.c", "hw/ide/pci.c")


def test_patches_touch_only_the_rebuilt_libs_or_qemus_xen_path_and_explain_themselves() -> None:
    # The Xen patches only touch the libraries the build installs (REBUILT_LIBS).
    where = [(p, ("tools/libs/light/", "tools/libs/guest/")) for p in xen_build.XEN_PATCHES]
    where += [(p, DM_PATHS) for p in xen_build.DM_PATCHES]
    for patch, prefixes in where:
        text = patch.read_text()
        files = re.findall(r"^\+\+\+ b/(\S+)", text, flags=re.M)
        assert files and all(f.startswith(prefixes) for f in files), files
        header = text.split("\n--- a/", 1)[0]
        if "hw/i386/pc.c" in files:
            assert "xen_load_linux()" in header, patch.name
        if "migration/colo.c" in files:
            assert "xen-colo-do-checkpoint" in header, patch.name
            hunks = re.findall(r"^@@ .* @@ ?(.*)$", text.split("+++ b/migration/colo.c", 1)[1],
                               re.M)
            assert hunks and all("qmp_xen_colo_do_checkpoint" in h for h in hunks), hunks
        if "hw/ide/pci.c" in files:
            assert "xen-load-devices-state" in header, patch.name
            added = re.findall(r"^\+.*", text.split("+++ b/hw/ide/pci.c", 1)[1], re.M)
            code = [ln[1:].strip() for ln in added
                    if ln[1:].strip() and not ln[1:].lstrip().startswith(("/*", "*"))]
            assert any(".pre_load = ide_pci_pre_load," == c for c in code), code
        if "hw/i386/pc_piix.c" in files:
            assert "xenfv" in header, patch.name
            added = re.findall(r"^\+.*", text.split("+++ b/hw/i386/pc_piix.c", 1)[1], re.M)
            assert all("xenfv" in ln or "compat" in ln or not ln[1:].strip() or
                       ln[1:].lstrip().startswith(("/*", "*", "{", "}", "static"))
                       for ln in added), added
        for why in ("Symptom", "Cause", "Fix"):
            assert why in header, (patch.name, why)


def test_a_device_model_patch_rekeys_it_and_not_libxl(monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    before = (xen_build.libxl_key("4.17.5-1"), xen_build.dm_key("7.2-18"))
    patch = tmp_path / "more.patch"
    patch.write_text("--- a/x\n+++ b/x\n")
    monkeypatch.setattr(xen_build, "DM_PATCHES", (*xen_build.DM_PATCHES, patch))
    assert xen_build.libxl_key("4.17.5-1") == before[0]
    assert xen_build.dm_key("7.2-18") != before[1]
