"""Domain configuration: golden file, then Xen's own parser (libxlutil) where it runs here."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from colo_orch.backends.xen import xlu
from colo_orch.backends.xen.domain import (
    ColoDisk,
    ColoNic,
    DomainConfigError,
    XenDomain,
    check_vif,
)

GOLDEN = Path(__file__).parent / "golden" / "colo-domain.cfg"

DISK = ColoDisk(target="/var/lib/colo/web.img", colo_host="192.168.100.2", colo_port=9000,
                colo_export="web0", active_disk="/var/lib/colo/active.qcow2",
                hidden_disk="/var/lib/colo/hidden.qcow2")
DOMAIN = XenDomain(
    name="web", memory_mb=1024, vcpus=2, disks=(DISK,),
    nics=(ColoNic("00:16:3E:C0:10:01", "br0", "colo0"),
          ColoNic("00:16:3e:c0:10:02", "br1", "colo1")),
    checkpoint=("127.0.0.1", 9911), extra={"boot": '"c"'})

needs_xlu = pytest.mark.skipif(not xlu.available(),
                               reason="libxlutil not here (apt-get install libxen-dev)")


def test_rendering_matches_the_golden_file() -> None:
    text = DOMAIN.render()
    if os.environ.get("COLO_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()


def test_the_documented_shapes() -> None:
    """xl.1: disk = ['...,colo,colo-host=xxx,colo-port=xxx,colo-export=xxx,active-disk=xxx,
    hidden-disk=xxx...']; the checkpoint keys only on the first vif."""
    spec = DISK.spec()
    assert ",colo,colo-host=192.168.100.2,colo-port=9000,colo-export=web0," in spec
    assert spec.endswith(",target=/var/lib/colo/web.img")
    first, second = (check_vif(n.spec(DOMAIN.checkpoint if i == 0 else None))
                     for i, n in enumerate(DOMAIN.nics))
    assert (first["colo_checkpoint_host"], first["colo_checkpoint_port"]) == ("127.0.0.1", "9911")
    assert "colo_checkpoint_host" not in second
    assert first["type"] == "ioemu" and DOMAIN.nics[0].tap == "colo0-emu"


@pytest.mark.parametrize("bad", [
    "mac=00:16:3e:00:00:01,colo_compare_out=x",  # QEMU's colo-compare would come back
    "mac=00:16:3e:00:00:01,colo_sock_mirror_id=m",
    "mac=00:16:3e:00:00:01,colour=blue",  # unknown to xl
    "mac",
])
def test_vif_checks_refuse(bad: str) -> None:
    with pytest.raises(DomainConfigError):
        check_vif(bad)


@pytest.mark.parametrize("make", [
    lambda: XenDomain("web", 512, 1, (DISK,), (), ("127.0.0.1", 9911)).render(),
    lambda: XenDomain("web", 512, 1, (), (ColoNic("00:16:3e:00:00:01", "br0", "c"),),
                      ("127.0.0.1", 9911)).render(),
    lambda: ColoNic("00:16:3e:00:00:01", "br0", "c").spec(("primary.example", 9911)),
    lambda: ColoNic("00:16:3e:00:00:01", "br0", "averylongname").spec(None),
    lambda: ColoDisk("/a,b", "h", 1, "e", "a", "h").spec(),
    lambda: ColoDisk("/a", "h", 70000, "e", "a", "h").spec(),
])
def test_generation_refuses_what_libxl_would_mishandle(make: object) -> None:
    with pytest.raises(DomainConfigError):
        make()  # type: ignore[operator]


@needs_xlu
def test_xens_parser_reads_the_file_and_every_colo_disk_field() -> None:
    parsed = xlu.parse_config(DOMAIN.render())
    assert len(parsed["disk"]) == 1 and len(parsed["vif"]) == 2
    disk = xlu.parse_disk(parsed["disk"][0])
    assert disk == {
        "vdev": "hda", "target": "/var/lib/colo/web.img", "format": "raw", "readwrite": "1",
        "colo": "1", "colo-host": "192.168.100.2", "colo-port": "9000", "colo-export": "web0",
        "active-disk": "/var/lib/colo/active.qcow2", "hidden-disk": "/var/lib/colo/hidden.qcow2",
    }
    for item in parsed["vif"]:
        check_vif(item)


@needs_xlu
def test_xens_parser_confirms_target_must_come_last() -> None:
    # Everything after target= becomes the path, vdev included.
    with pytest.raises(xlu.XluError, match="no vdev specified"):
        xlu.parse_disk("target=/img,colo,colo-host=h,colo-port=1,vdev=hda")
    assert xlu.parse_disk("vdev=hda,target=/img,colo")["target"] == "/img,colo"


@needs_xlu
def test_xens_parser_rejects_a_bad_colo_port() -> None:
    with pytest.raises(xlu.XluError, match="colo_port"):
        xlu.parse_disk("vdev=hda,colo,colo-port=nbd,target=/img")
