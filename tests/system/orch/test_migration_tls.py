"""COLO's migration and NBD disk replication over QEMU's TLS (migration_tls = "x509"), on
the lab's VMs: the pair protects and checkpoints over TLS, and a plain client on the control
link can neither feed the waiting secondary VM state nor write its disk.

The secondary's orchestrator starts first, so that its VM waits with its listener and its
NBD export open while the test plays the intruder from the primary host's namespace; then
the primary's orchestrator brings the pair to PROTECTED. About 45 s here (TCG).
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from colo_lab import netns, pair
from colo_lab.errors import LabError
from colo_lab.lab import MIG_PRIMARY, MIG_SECONDARY, MIGRATION_PORT, Lab
from colo_lab.wait import wait_until
from colo_orch.backends.qemu.process import alive
from colo_orch.cli.disk import main as disk_main
from tests.support import tls

pytestmark = [pytest.mark.lab(secondary="none", orchestrators=False, disk=True),
              pytest.mark.timeout(240)]

NBD_PORT = 10809  # the orchestrator's default nbd_port
# A QEMU migration stream's header (QEMU_VM_FILE_MAGIC, version 3), then bytes that are no
# section: a QEMU that takes it as its incoming migration fails to load it and exits.
PLAIN_STREAM = b"QEVM\x00\x00\x00\x03" + b"\x07" * 4096


def _pki(lab: Lab) -> dict[str, Path]:
    ca = tls.make_ca(lab.run_dir / "pki-ca", "colo lab pair CA")
    return {role: tls.host_dir(ca, lab.run_dir / f"pki-{role[:3]}", ip)
            for role, ip in (("primary", MIG_PRIMARY), ("secondary", MIG_SECONDARY))}


def _extra(d: Path) -> str:
    return f'migration_tls = "x509"\nmigration_tls_dir = "{d}"\n'


def _plain_migration(lab: Lab) -> None:
    """From the primary host: connect to the secondary's migration port, send a plain stream,
    and read until the secondary's QEMU hangs up (or, a QEMU that takes the stream and waits
    for more of it, for 5 s)."""
    code = (f"import socket\n"
            f"s = socket.create_connection(({MIG_SECONDARY!r}, {MIGRATION_PORT}), timeout=5)\n"
            f"s.sendall({PLAIN_STREAM!r})\n"
            f"try:\n    while s.recv(4096): pass\n"
            f"except (ConnectionResetError, TimeoutError): pass\n")
    netns.sh(lab.hosts["primary"].ns, ["python3", "-c", code], timeout=30)


def _plain_nbd_write(lab: Lab) -> subprocess.CompletedProcess[str]:
    """From the primary host: a plain NBD client writes 4 KiB into the secondary's export."""
    return subprocess.run(
        ["ip", "netns", "exec", lab.hosts["primary"].ns, "qemu-io", "-f", "raw",
         "-c", "write -P 0x5a 0 4k", f"nbd://{MIG_SECONDARY}:{NBD_PORT}/disk0-parent"],
        capture_output=True, text=True, timeout=30, check=False)


def _sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _svm_pid(lab: Lab) -> int:
    return int((lab.run_dir / "svm.pid").read_text())


def test_protected_over_tls_and_plain_clients_are_refused(lab: Lab) -> None:
    pki = _pki(lab)
    pair.start_orchestrator(lab, "secondary", extra=_extra(pki["secondary"]))
    pair.wait_state(lab, "secondary", "WAITING", 60)

    wait_until(lambda: _nbd_up(lab), 30, "the secondary's NBD export")

    # 1. The migration port: a plain stream is refused in the TLS handshake; the VM waits on.
    pid = _svm_pid(lab)
    vm_log = lab.run_dir / "orch-secondary-vm.log"
    _plain_migration(lab)
    wait_until(lambda: "TLS handshake failed" in vm_log.read_text(errors="replace")
               or not alive(pid), 20, "the secondary's QEMU to refuse the plain stream")
    assert alive(pid), f"the waiting VM died of a plain stream: {vm_log.read_text()[-300:]}"
    assert pair.state(lab, "secondary").get("state") == "WAITING"

    # 2. The NBD export: a plain client may not open it, let alone write.
    image = lab.disks("secondary")[0].image
    before = _sha(image)
    res = _plain_nbd_write(lab)
    assert res.returncode != 0 and "TLS" in res.stdout + res.stderr, res.stdout + res.stderr
    assert _sha(image) == before

    # 3. The primary: COLO's migration and the disk's resync and replication over TLS.
    pair.start_orchestrator(lab, "primary", extra=_extra(pki["primary"]))
    pair.wait_state(lab, "primary", "PROTECTED", 90)
    pair.wait_state(lab, "secondary", "PROTECTED", 30)
    assert _svm_pid(lab) == pid  # the very VM the plain clients tried
    before_cp = pair.checkpoint_count(lab, "primary")
    assert lab.http("/kv/tls", method="PUT", data=b"over tls")[0] == 200
    pair.api(lab, "primary", "POST", "/checkpoint")
    wait_until(lambda: pair.checkpoint_count(lab, "primary") > before_cp, 30, "a checkpoint")
    pri, sec = lab.disks("primary")[0], lab.disks("secondary")[0]
    wait_until(lambda: disk_main(["verify", "--settle", "1", pri.image, sec.image]) == 0, 30,
               "the secondary's image equal to the primary's (replicated over TLS)")
    assert lab.http("/kv/tls") == (200, b"over tls")

    # 4. Protected: the export still refuses plain clients while the primary replicates.
    res = _plain_nbd_write(lab)
    assert res.returncode != 0 and "TLS" in res.stdout + res.stderr, res.stdout + res.stderr
    assert pair.state(lab, "primary").get("state") == "PROTECTED"


def _nbd_up(lab: Lab) -> bool:
    """The secondary's NBD server answers (its greeting) on the control link."""
    code = (f"import socket\n"
            f"s = socket.create_connection(({MIG_SECONDARY!r}, {NBD_PORT}), timeout=1)\n"
            f"assert s.recv(8) == b'NBDMAGIC'\n")
    try:
        netns.sh(lab.hosts["primary"].ns, ["python3", "-c", code], timeout=10)
    except LabError:  # refused, or not greeting yet
        return False
    return True
