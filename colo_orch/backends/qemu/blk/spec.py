"""The protected disks of one host and their QEMU command-line arguments (pure).

Node names derive from the disk's id, so the primary's and the secondary's
graphs, the NBD export and the QMP commands agree without passing names around.
The `-device` is identical in both roles: the guest must see the same disk on
either VM, and COLO migrates the device state between them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import astuple, dataclass

from colo_orch.core.disks import Disk


@dataclass(frozen=True)
class QemuDisk(Disk):
    """A configured disk with the names QEMU's block graph gives its nodes."""

    @classmethod
    def of(cls, disk: Disk) -> QemuDisk:
        return disk if isinstance(disk, QemuDisk) else cls(*astuple(disk))

    # QEMU names --------------------------------------------------------------
    @property
    def top(self) -> str:
        """The quorum the guest's device sits on (the replication `top-id`)."""
        return f"colo-{self.id}"

    @property
    def parent(self) -> str:
        """Secondary: the drive over the secondary's image; also the NBD export name."""
        return f"{self.id}-parent"

    @property
    def childs(self) -> str:
        """Secondary: the replication,mode=secondary node."""
        return f"{self.id}-childs"

    @property
    def replication(self) -> str:
        """Primary: the replication,mode=primary node added as the quorum's second child."""
        return f"{self.id}-replication"

    @property
    def nbd(self) -> str:
        """Primary: the NBD client under the replication node (named so `yank` can find it)."""
        return f"{self.id}-nbd"

    @property
    def device(self) -> str:
        return f"{self.id}-dev"

    @property
    def resync_job(self) -> str:
        return f"{self.id}-resync"


def _esc(path: str) -> str:
    """QEMU option values double a comma to mean a literal one."""
    return path.replace(",", ",,")


def _quorum(d: QemuDisk, child: str) -> str:
    return (f"if=none,id={d.top},driver=quorum,read-pattern=fifo,vote-threshold=1,"
            f"children.0{child}")


def drive_args(disks: Sequence[Disk], *, secondary: bool) -> list[str]:
    """The -drive/-device arguments of all disks for a primary or a secondary VM."""
    argv: list[str] = []
    for d in map(QemuDisk.of, disks):
        if secondary:
            argv += ["-drive", f"if=none,id={d.parent},driver=raw,file.filename={_esc(d.image)}"]
            argv += ["-drive", (f"if=none,id={d.childs},driver=replication,mode=secondary,"
                                f"top-id={d.top},file.driver=qcow2,"
                                f"file.file.filename={_esc(d.active)},"
                                f"file.backing.driver=qcow2,"
                                f"file.backing.file.filename={_esc(d.hidden)},"
                                f"file.backing.backing={d.parent}")]
            argv += ["-drive", _quorum(d, f"={d.childs}")]
        else:
            argv += ["-drive", _quorum(d, f".driver=raw,children.0.file.filename={_esc(d.image)}")]
        argv += ["-device", f"virtio-blk-pci,drive={d.top},id={d.device}"]
    return argv


def uri_host(uri: str) -> str:
    """The host part of "tcp:HOST:PORT" (the peer's migration address, where its NBD runs)."""
    rest = uri.split(":", 1)[1] if uri.startswith("tcp:") else uri
    host = rest.rsplit(":", 1)[0]
    return host.strip("[]")
