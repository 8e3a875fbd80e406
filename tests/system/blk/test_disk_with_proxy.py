"""Disk replication with the output-commit proxy in the path (the full guarantee).

With colo-proxy holding the PVM's output until the SVM agrees or a checkpoint
commits it, a client gets an answer only for a write the survivor will have:
after a failover EVERY acknowledged record is on the survivor's disk, whole.
Also: `coloctl disk verify` finds a block corrupted on the secondary's image.
"""

from __future__ import annotations

import time

import pytest

from colo_lab import netns, pair
from colo_lab.lab import Lab
from colo_lab.wait import wait_until
from colo_orch.cli.disk import main as disk_main
from tests.support.records import Writer, failovers, took_over, value

pytestmark = pytest.mark.lab(proxy=True, disk=True)


def _all_acked_present(lab: Lab, acked: dict[int, float]) -> None:
    for n in sorted(acked):
        code, body = lab.http(f"/kv/r{n}", timeout=10)
        assert (code, body) == (200, value(n)), f"acknowledged record r{n}: {code} {body[:40]!r}"


@pytest.mark.timeout(90)  # 30 s here, with the boot
def test_every_acknowledged_record_survives_two_failovers(lab: Lab) -> None:
    with Writer(lab, 0) as w:
        wait_until(lambda: len(w.acked) >= 8, 90, "records")
        taken = failovers(lab, "secondary")
        pair.kill_vm(lab, "primary")
        killed_at = time.monotonic()
    took_over(lab, "secondary", taken)
    acked = {n: t for n, t in w.acked.items() if t < killed_at}
    assert len(acked) >= 8
    _all_acked_present(lab, acked)

    pair.wait_state(lab, "primary", "PROTECTED", 120)
    pair.wait_state(lab, "secondary", "PROTECTED", 30)
    with Writer(lab, max(w.acked) + 1) as w2:
        wait_until(lambda: len(w2.acked) >= 5, 90, "records after re-protection")
        taken = failovers(lab, "primary")
        pair.kill_vm(lab, "secondary")
        killed_at = time.monotonic()
    took_over(lab, "primary", taken)
    acked2 = {**acked, **{n: t for n, t in w2.acked.items() if t < killed_at}}
    _all_acked_present(lab, acked2)


def test_verify_finds_a_corrupted_block_on_the_secondary(lab: Lab) -> None:
    pri, sec = lab.disks("primary")[0], lab.disks("secondary")[0]
    assert lab.http("/kv/x", method="PUT", data=b"y" * 5000)[0] == 200
    pair.api(lab, "primary", "POST", "/checkpoint")
    wait_until(lambda: disk_main(["verify", pri.image, sec.image]) == 0, 30, "equal disks")
    # Flip bytes in the middle of the secondary's image, behind QEMU's back.
    offset = 5 * 1024 * 1024 + 123
    with open(sec.image, "r+b") as fh:
        fh.seek(offset)
        old = fh.read(16)
        fh.seek(offset)
        fh.write(bytes(b ^ 0xFF for b in old))
    try:
        assert disk_main(["verify", "--settle", "0.5", pri.image, sec.image]) == 1
    finally:  # for the next test on this lab (which checks the disks are equal)
        with open(sec.image, "r+b") as fh:
            fh.seek(offset)
            fh.write(old)


@pytest.mark.lab(spoils=True)  # the link stays cut
def test_cut_nbd_link_ends_protection_visibly(lab: Lab) -> None:
    # The replication link to the secondary's NBD export goes dark (no RST, packets lost).
    sec_ns = lab.hosts["secondary"].ns
    netns.sh(sec_ns, ["iptables", "-w", "-I", "INPUT", "-p", "tcp", "--dport", "10809",
                      "-j", "DROP"])
    assert lab.http("/kv/cut", method="PUT", data=b"during the cut", timeout=30)[0] == 200
    # The primary must not keep calling an unreplicated disk protected.
    st = pair.wait_state(lab, "primary", {"ALONE", "DEGRADED"}, 60)
    assert any("disk replication broken" in s for s in st["recent"]), st["recent"]
    # The stale secondary is fenced rather than left PROTECTED.
    pair.wait_state(lab, "secondary", {"FENCED", "STARTING", "WAITING", "DEGRADED"}, 30)
    assert lab.http("/kv/cut", timeout=30) == (200, b"during the cut")


@pytest.mark.lab(orchestrators=False)  # started by the test, once the port is closed
@pytest.mark.timeout(90)  # 26 s here, with the boot
def test_secondary_not_listening_is_a_clear_degraded_state(lab: Lab) -> None:
    # Nothing answers on the secondary's NBD port: reject connections outright.
    netns.sh(lab.hosts["secondary"].ns, ["iptables", "-w", "-I", "INPUT", "-p", "tcp",
                                          "--dport", "10809", "-j", "REJECT",
                                          "--reject-with", "tcp-reset"])
    pair.start_orchestrators(lab, proxy=True)
    st = pair.wait_state(lab, "primary", "DEGRADED", 90)
    assert "enter_colo failed" in st["degraded_reason"], st
    assert "10809" in st["degraded_reason"] or "NBD" in st["degraded_reason"], st
    # Never reported as protected, and the PVM keeps serving.
    assert pair.state(lab, "primary")["state"] != "PROTECTED"
    assert lab.http("/health", timeout=30)[0] == 200
