"""The orchestrators drive a real QEMU COLO pair in the lab: protect, checkpoint, fail over,
re-protect, and fail over a second time (the direction reversed)."""

from __future__ import annotations

import os
import signal

import pytest

from colo_lab import netns, pair
from colo_lab.lab import Lab
from colo_lab.wait import wait_until

pytestmark = pytest.mark.lab()


def _checkpoints(lab: Lab, host: str) -> int:
    return pair.checkpoint_count(lab, host)


def _store_and_checkpoint(lab: Lab, primary: str, key: str, value: bytes) -> None:
    assert lab.http(f"/kv/{key}", method="PUT", data=value)[0] == 200
    before = _checkpoints(lab, primary)
    pair.api(lab, primary, "POST", "/checkpoint")
    wait_until(lambda: _checkpoints(lab, primary) > before, 20, "manual checkpoint")


def test_protect_checkpoint_failover_reprotect_failover(lab: Lab) -> None:
    pri = pair.wait_state(lab, "primary", "PROTECTED", 60)
    sec = pair.wait_state(lab, "secondary", "PROTECTED", 30)
    assert (pri["role"], sec["role"]) == ("primary", "secondary")
    assert pri["lease_holder"] == "pri"

    for i in range(3):
        _store_and_checkpoint(lab, "primary", f"k{i}", f"v{i}".encode())
    assert pair.state(lab, "primary")["checkpoints"]["manual"] >= 3
    metrics = pair.metrics(lab, "primary")
    assert metrics['colo_checkpoints_total{reason="manual"}'] >= 3
    assert metrics['colo_checkpoints_total{reason="payload"}'] == 0
    # The last checkpoint's count is taken before the loop returns to PROTECTED.
    assert (metrics['colo_orch_state{colo_orch_state="PROTECTED"}']
            + metrics['colo_orch_state{colo_orch_state="CHECKPOINTING"}']) == 1
    assert metrics["colo_checkpoint_pvm_pause_seconds_count"] >= 3
    assert metrics["colo_peer_up"] == 1 and metrics["colo_arbiter_lease_held"] == 1

    # 1. The PVM's QEMU dies: the secondary takes over with the checkpointed state.
    taken = pair.state(lab, "secondary")["failovers"]
    pair.kill_vm(lab, "primary")
    sec = pair.wait_state(lab, "secondary", "ALONE", 30)
    assert sec["role"] == "primary" and sec["failovers"] == taken + 1
    assert pair.metrics(lab, "secondary")["colo_failovers_total"] == taken + 1
    assert sec["last_takeover_s"] is not None and sec["last_takeover_s"] < 5
    assert pair.wait_state(lab, "primary", {"FENCED", "STARTING", "WAITING", "PROTECTED"}, 10)
    assert lab.http("/kv/k2") == (200, b"v2")

    # 2. Re-protection: the old primary host starts a new SVM; the survivor re-enters COLO.
    pri = pair.wait_state(lab, "primary", "PROTECTED", 90)
    sec = pair.wait_state(lab, "secondary", "PROTECTED", 30)
    assert (pri["role"], sec["role"]) == ("secondary", "primary")
    _store_and_checkpoint(lab, "secondary", "after", b"reprotected")

    # 3. Second failover, the other way: the new PVM (on the secondary host) dies.
    taken = pair.state(lab, "primary")["failovers"]
    pair.kill_vm(lab, "secondary")
    pri = pair.wait_state(lab, "primary", "ALONE", 30)
    assert pri["role"] == "primary" and pri["failovers"] == taken + 1
    wait_until(lambda: lab.http("/health", timeout=3)[0] == 200, 20, "service after 2nd failover")
    assert lab.http("/kv/after") == (200, b"reprotected")
    assert lab.http("/kv/k1") == (200, b"v1")
    for role in ("primary", "secondary"):
        assert lab.vm(role).serial_problems() == []


def test_a_forged_command_from_the_peer_host_changes_nothing(lab: Lab) -> None:
    """Another host on the control link (here the secondary's namespace, as a compromised
    peer or a LAN machine would) sends failover, pause and reprotect with a made-up token,
    and with no token, to both orchestrators: each is refused, and the pair stays as it
    was for at least 20 heartbeats afterwards."""
    pair.wait_state(lab, "primary", "PROTECTED", 60)
    before = {h: pair.state(lab, h) for h in ("primary", "secondary")}
    logs = {h: lab.run_dir / f"orch-{h}.log" for h in before}
    logged = {h: len(logs[h].read_text()) for h in before}
    sec = lab.hosts["secondary"]
    codes = []
    for host in ("primary", "secondary"):
        for cmd in ("failover", "pause", "reprotect"):
            for auth in (["-H", "Authorization: Bearer forged-token-0123456789"], []):
                codes.append(netns.sh(sec.ns, ["curl", "-s", "-o", "/dev/null", "-w",
                                               "%{http_code}", "-m", "5", "-X", "POST", *auth,
                                               f"{pair.api_url(lab, host)}/{cmd}"]))
    assert codes == ["401"] * 12
    sent = before["secondary"]["heartbeats"]["sent"]
    wait_until(lambda: pair.state(lab, "secondary")["heartbeats"]["sent"] >= sent + 20, 20,
               "20 more heartbeats from the secondary")
    for host in ("primary", "secondary"):
        now = pair.state(lab, host)
        # (A periodic checkpoint may be under way.)
        assert now["state"] in ("PROTECTED", "CHECKPOINTING"), (host, now["recent"])
        assert (now["role"], now["failovers"], now["reprotections"]) == \
            (before[host]["role"], before[host]["failovers"], before[host]["reprotections"])
        m = pair.metrics(lab, host)
        assert m['colo_api_requests_refused_total{reason="unauthorized"}'] >= 6
        assert "API command" not in logs[host].read_text()[logged[host]:]


def test_secondary_loss_leaves_the_primary_serving_alone(lab: Lab) -> None:
    pair.wait_state(lab, "primary", "PROTECTED", 60)
    pair.wait_state(lab, "secondary", "PROTECTED", 30)
    pair.kill_vm(lab, "secondary")
    pri = pair.wait_state(lab, "primary", "ALONE", 30)
    assert pri["role"] == "primary"
    assert lab.http("/health")[0] == 200
    # The fenced secondary host brings up a new SVM and the pair is protected again.
    pair.wait_state(lab, "primary", "PROTECTED", 90)
    pair.wait_state(lab, "secondary", "PROTECTED", 30)


@pytest.mark.lab(extra="[timing]\nqmp_timeout = 1.0\n")
def test_hung_primary_qemu_degrades_then_is_fenced_and_replaced(lab: Lab) -> None:
    _store_and_checkpoint(lab, "primary", "before", b"hang")
    pid = int((lab.run_dir / "pvm.pid").read_text())
    os.kill(pid, signal.SIGSTOP)  # QEMU alive but its monitor never answers
    try:
        st = pair.wait_state(lab, "primary", {"DEGRADED", "FENCED"}, 20)
        assert st["degraded_reason"] == "QEMU monitor hung"
        # The orchestrator itself stays responsive, and the peer takes over.
        sec = pair.wait_state(lab, "secondary", "ALONE", 30)
        assert sec["role"] == "primary"
        # The hung VM is fenced (killed), never resumed beside the new primary.
        wait_until(lambda: not _alive(pid), 30, "hung PVM fenced")
    finally:
        if _alive(pid):
            os.kill(pid, signal.SIGCONT)
    assert lab.http("/kv/before") == (200, b"hang")
    pair.wait_state(lab, "primary", "PROTECTED", 90)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = open(f"/proc/{pid}/stat").read().split()
    return stat[2] != "Z"
