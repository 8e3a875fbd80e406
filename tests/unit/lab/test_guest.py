"""The guest builder's pure parts: module order, the initramfs format, the blob pattern."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from colo_lab import guest
from colo_lab.errors import LabError


def _cpio_entries(data: bytes) -> dict[str, tuple[int, bytes]]:
    """Parse a newc cpio (the format the kernel unpacks) back into name -> (mode, data)."""
    out: dict[str, tuple[int, bytes]] = {}
    pos = 0
    while True:
        assert data[pos:pos + 6] == b"070701"
        fields = [int(data[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        pos += 110
        name = data[pos:pos + namesize - 1].decode()
        pos += namesize
        pos += -pos % 4
        body = data[pos:pos + size]
        pos += size
        pos += -pos % 4
        if name == "TRAILER!!!":
            return out
        out[name] = (mode, body)


def test_module_order_puts_dependencies_first(tmp_path: Path) -> None:
    dep = tmp_path / "modules.dep"
    dep.write_text(
        "kernel/drivers/virtio/virtio.ko:\n"
        "kernel/drivers/virtio/virtio_ring.ko:\n"
        "kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_ring.ko "
        "kernel/drivers/virtio/virtio.ko\n"
        "kernel/net/core/failover.ko:\n"
        "kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko\n"
        "kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko "
        "kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n"
        "kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko\n"
        "kernel/drivers/scsi/scsi_common.ko:\n"
        "kernel/drivers/scsi/scsi_mod.ko: kernel/drivers/scsi/scsi_common.ko\n"
        "kernel/drivers/ata/libata.ko: kernel/drivers/scsi/scsi_mod.ko "
        "kernel/drivers/scsi/scsi_common.ko\n"
        "kernel/drivers/ata/ata_piix.ko: kernel/drivers/ata/libata.ko "
        "kernel/drivers/scsi/scsi_mod.ko kernel/drivers/scsi/scsi_common.ko\n"
        "kernel/drivers/scsi/sd_mod.ko: kernel/drivers/scsi/scsi_mod.ko "
        "kernel/drivers/scsi/scsi_common.ko\n"
    )
    order = [Path(m).name for m in guest._module_order(dep)]
    assert len(order) == len(set(order)) == 12
    for mod, needs in [("virtio_pci.ko", "virtio.ko"), ("virtio_net.ko", "net_failover.ko"),
                       ("net_failover.ko", "failover.ko"), ("virtio_blk.ko", "virtio_ring.ko"),
                       ("ata_piix.ko", "libata.ko"), ("libata.ko", "scsi_mod.ko"),
                       ("sd_mod.ko", "scsi_common.ko")]:
        assert order.index(needs) < order.index(mod)


def test_missing_module_is_a_lab_error(tmp_path: Path) -> None:
    dep = tmp_path / "modules.dep"
    dep.write_text("kernel/drivers/virtio/virtio.ko:\n")
    with pytest.raises(LabError, match="virtio_pci not found"):
        guest._module_order(dep)


def test_initramfs_holds_init_busybox_modules_and_parent_dirs(tmp_path: Path) -> None:
    moddir = tmp_path / "mods"
    (moddir / "kernel").mkdir(parents=True)
    (moddir / "kernel" / "a.ko").write_bytes(b"A" * 5)
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"\x7fELF-static")
    entries = _cpio_entries(gzip.decompress(guest._initramfs(busybox, moddir, ["kernel/a.ko"],
                                                             b"\x7fELF-udp")))
    assert entries["init"][1] == (guest.GUESTFS / "init.sh").read_bytes()
    assert entries["init"][0] & 0o111
    assert entries["bin/busybox"][1] == b"\x7fELF-static"
    assert entries["bin/colo-udp-echo"][1] == b"\x7fELF-udp"
    assert entries["bin/colo-udp-echo"][0] & 0o111
    assert entries["lib/modules/a.ko"][1] == b"AAAAA"
    assert entries["lib/modules/modules.order"][1] == b"a.ko\n"
    assert entries["bin/sh"][1] == b"busybox"
    # The kernel does not create parent directories while unpacking.
    names = list(entries)
    for needed in ("lib", "lib/modules", "bin", "srv"):
        assert needed in names
        assert names.index(needed) < names.index(f"{needed}/" + next(
            n.split("/")[-1] for n in names if n.startswith(needed + "/")))


def test_pattern_is_fixed_and_not_repetitive() -> None:
    p = guest.pattern()
    assert len(p) == guest.PATTERN_SIZE
    assert p == guest.pattern()
    assert p[:4096] != p[4096:8192]
