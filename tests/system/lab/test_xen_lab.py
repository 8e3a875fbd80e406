"""The nested Xen lab (docs/xen.md): what `colo-lab build --xen` made has COLO where
Debian's Xen has none, two nested Xen hosts boot to a dom0 whose `xl` uses it, and the
lab's guest serves the lab's client from an HVM domain on one of them.

Skipped unless COLO_XEN_TESTS=1 (`make test-xen`, which builds first)."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from pathlib import Path

import pytest

from colo_lab import xen_lab
from colo_lab.guest import cached_guest, ensure_guest, pattern
from colo_lab.lab import Lab
from colo_lab.xen_build import (
    DEBIAN_KEPT,
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
    # The dom0 runs this library, not Debian's stub build (kept aside, unused).
    assert _image_file(build.rootfs, f"{LIBDIR}/{LIBXL}") == build.libxl.read_bytes()
    debian = _image_file(build.rootfs, f"{DEBIAN_KEPT}/{LIBXL}")
    assert b"COLO is not supported" in debian


def test_device_model_has_the_replication_driver(build: XenLab) -> None:
    check_dm_has_replication(build.device_model)
    assert _image_file(build.rootfs, DM_PATH) == build.device_model.read_bytes()


@pytest.mark.timeout(900)
def test_two_nested_xen_hosts_boot_to_a_dom0_with_colo_libxl(build: XenLab) -> None:
    lab = Lab(f"xen{os.getpid() % 10000}")
    try:
        lab.up(vms=False)
        took = xen_lab.up(lab, build, cached_guest() or ensure_guest())
        assert set(took) == {"primary", "secondary"}
        for x in xen_lab.hosts(lab, build).values():
            info = x.console("xl info")
            assert re.search(r"^xen_version\s*:\s*4\.17", info, re.M), info
            assert re.search(r"^virt_caps\s*:.*\bhvm\b", info, re.M), info
            # Debian's xl wrapper runs /usr/lib/xen-4.17/bin/xl: the libxl it loads must be
            # the rebuilt one, byte for byte.
            loaded = x.console("sha256sum $(readlink -f $(ldd /usr/lib/xen-4.17/bin/xl "
                               "| grep -o '/[^ ]*libxenlight[^ ]*'))")
            assert loaded.split()[0] == hashlib.sha256(build.libxl.read_bytes()).hexdigest()
        # The control link between the two dom0s (migration and COLO run over it later).
        pri = xen_lab.hosts(lab, build)["primary"]
        pri.console(f"busybox ping -c 1 -W 5 {xen_lab.DOM0_CTL_IP['secondary']}")
        _hvm_domain_runs_on_the_rebuilt_device_model(pri)
        _xl_remus_c_reaches_libxl_colo_code(pri)
        # The lab's guest as an HVM domain on the primary, its service reached from the
        # lab's client across the LAN, the host namespace's bridge and the dom0's xenbr0.
        xen_lab.start_service(lab, pri)
        assert lab.http("/blob/1000") == (200, pattern()[:1000])
    finally:
        lab.down()
    assert lab.leftovers() == []


# An HVM domain with no disk (SeaBIOS finds nothing to boot, the domain runs on) and one
# NIC carrying the userspace COLO proxy's address, as colo_orch/backends/xen/domain.py
# writes it; tsc_mode native: XEN-NESTED.md (RDTSCP under TCG).
HVM_CFG = ('name = "colocheck"\\ntype = "hvm"\\nmemory = 128\\nvcpus = 1\\nvnc = 0\\n'
           'serial = "pty"\\ntsc_mode = "native"\\nvif = [ "bridge=xenbr0,model=e1000,'
           'colo_checkpoint_host=127.0.0.1,colo_checkpoint_port=9911" ]\\n')
# xl remus -c -p to a receiver on the same dom0 (-s "": the host argument is the command).
REMUS = ("timeout 120 xl remus -c -p -s '' colocheck "
         "'xl migrate-receive --colo --userspace-colo-proxy -e' || true")


def _hvm_domain_runs_on_the_rebuilt_device_model(x: xen_lab.XenHost) -> None:
    x.console(f"printf '{HVM_CFG}' > /tmp/colocheck.cfg")
    x.console("xl create /tmp/colocheck.cfg", timeout=180)
    domid = x.console("xl domid colocheck").strip()
    assert domid.isdigit() and domid != "0"
    dms = x.console("ps -eo args | grep '^/usr/libexec/xen-qemu-system-i386' || true")
    assert re.search(rf"-xen-domid {domid}\b", dms), dms


def _xl_remus_c_reaches_libxl_colo_code(x: xen_lab.XenHost) -> None:
    """The rebuilt libxl runs its COLO setup (libxl_colo_save.c, libxl_colo_proxy.c) and
    stops where no proxy listens on 127.0.0.1:9911; Debian's stub build, loaded instead
    through LD_LIBRARY_PATH (Debian's xl has no RPATH), says COLO is not supported."""
    ours = x.console(REMUS, timeout=240)
    x.console("for d in $(xl list | awk 'NR > 1 && $1 ~ /incoming/ {print $2}'); do "
              "xl destroy $d; done")
    assert "COLO is not supported" not in ours, ours
    assert re.search(r"libxl_colo_\w+\.c:\d+:", ours), ours
    x.console(f"mkdir -p /tmp/stub && ln -sf /{DEBIAN_KEPT}/{LIBXL} /tmp/stub/libxenlight.so.4.17")
    stub = x.console(f"LD_LIBRARY_PATH=/tmp/stub {REMUS}", timeout=240)
    assert "COLO is not supported" in stub, stub
