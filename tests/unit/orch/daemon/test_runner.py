"""colo_orch.daemon.runner: what the loop takes from the peer's heartbeat, and what it does not."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest

from colo_orch.core.commands import CommandRefused
from colo_orch.core.config import Config, Timing
from colo_orch.core.decide import XEN_REPROTECT, Decision, VmObs
from colo_orch.core.disks import DiskStatus
from colo_orch.core.state import Event, State
from colo_orch.daemon.arbiter import LocalLeaseArbiter
from colo_orch.daemon.heartbeat import PeerReport
from colo_orch.daemon.proxy_link import ProxyLink
from colo_orch.daemon.runner import Orchestrator


class _Heartbeat:
    def __init__(self, payload: dict[str, Any]) -> None:
        now = time.monotonic()
        self.report = PeerReport(now, payload, None, echo_sent_at=now)

    def last(self) -> PeerReport:
        return self.report


def _orchestrator(tmp_path: Path, heartbeat: Any) -> Orchestrator:
    cfg = Config(name="web", role="primary", qmp="/q", qmp_events="/e",
                 heartbeat_listen="127.0.0.1:1", peer_heartbeat="127.0.0.1:2",
                 incoming_uri="tcp:10.99.1.1:4444", peer_incoming_uri="tcp:10.99.1.2:4444",
                 arbiter_path=str(tmp_path / "lease"))
    return Orchestrator(cfg, backend=None, arbiter=LocalLeaseArbiter(cfg.arbiter_path, "a", 3.0),  # type: ignore[arg-type]
                        heartbeat=heartbeat, proxy=None, host_id="a")


def test_the_migration_target_comes_from_our_config_not_the_heartbeat(tmp_path: Path) -> None:
    # A forged heartbeat (or a compromised peer) names another host as the place to send
    # the VM's memory to; before, the primary migrated there.
    forged = _Heartbeat({"state": int(State.WAITING), "role": "secondary", "vm_ok": True,
                         "incoming": "tcp:203.0.113.9:4444", "proxy_ready": True})
    orch = _orchestrator(tmp_path, forged)
    snap = orch.snapshot(time.monotonic())
    assert snap.peer.alive and snap.peer.role == "secondary"
    assert snap.peer.incoming_uri == "tcp:10.99.1.2:4444"


class _Silent:
    def last(self) -> None:
        return None


def test_a_peer_not_yet_heard_is_lost_only_after_heartbeat_timeout(tmp_path: Path) -> None:
    """A restarted orchestrator adopting a protected VM took the peer it had not heard yet
    for a lost one, and failed over on its first cycle."""
    orch = _orchestrator(tmp_path, _Silent())
    timeout = orch.cfg.timing.heartbeat_timeout
    now = orch._listening_since + 0.5 * timeout
    peer = orch.snapshot(now).peer
    assert peer.alive and peer.state is None and peer.role == ""  # nothing known, not lost
    assert not orch.snapshot(orch._listening_since + timeout).peer.alive


def test_a_proxy_request_or_an_operator_command_wakes_the_loop(tmp_path: Path) -> None:
    # The loop sleeps on this event for up to loop_wait: what must be acted on at once
    # sets it (the proxy link's reader thread, the API's handler).
    cfg = Config(name="web", role="primary", qmp="/q", qmp_events="/e",
                 heartbeat_listen="127.0.0.1:1", peer_heartbeat="127.0.0.1:2",
                 incoming_uri="tcp:10.99.1.1:4444", peer_incoming_uri="tcp:10.99.1.2:4444",
                 arbiter_path=str(tmp_path / "lease"))
    link = ProxyLink(str(tmp_path / "proxy.sock"))
    orch = Orchestrator(cfg, backend=None, arbiter=LocalLeaseArbiter(cfg.arbiter_path, "a", 3.0),  # type: ignore[arg-type]
                        heartbeat=_Silent(), proxy=link, host_id="a")
    assert not orch._wake.is_set()
    assert link.on_request is not None
    link.on_request()
    assert orch._wake.is_set()
    orch._wake.clear()
    orch.machine.state = State.PROTECTED
    orch.request("checkpoint")
    assert orch._wake.is_set()


def test_the_state_api_shows_a_degraded_disk(tmp_path: Path) -> None:
    orch = _orchestrator(tmp_path, _Silent())
    assert orch._disk_view() is None  # no replicated disks
    orch.disk_status = (DiskStatus("broken", "1 write(s) to the secondary's disk failed",
                                   4096, 1, {"QUORUM_REPORT_BAD": 1, "BLOCK_IO_ERROR": 0},
                                   "QUORUM_REPORT_BAD on disk0-replication: write failed"), 1)
    assert orch._disk_view() == {
        "count": 1, "degraded": True, "state": "broken",
        "problem": "1 write(s) to the secondary's disk failed", "bytes_replicated": 4096,
        "errors": 1, "error_events": {"QUORUM_REPORT_BAD": 1, "BLOCK_IO_ERROR": 0},
        "last_error_event": "QUORUM_REPORT_BAD on disk0-replication: write failed"}


def _failures(orch: Orchestrator) -> float:
    value = orch.metrics.checkpoint_failures._value.get()
    assert isinstance(value, float)
    return value


def test_a_checkpoint_in_progress_is_not_counted_as_failed(tmp_path: Path) -> None:
    """The loop cycles while the action thread checkpoints. Each cycle that ended still
    CHECKPOINTING counted one failure: the lab's Prometheus saw
    colo_checkpoint_failures_total rise with every successful payload checkpoint."""
    orch = _orchestrator(tmp_path, _Silent())
    now = time.monotonic()
    snap = orch.snapshot(now)
    d = Decision("checkpoint in progress")
    orch.machine.state = State.CHECKPOINTING
    for _ in range(3):
        orch._bookkeeping(State.CHECKPOINTING, snap, d, now)  # still CHECKPOINTING
    assert _failures(orch) == 0
    orch.machine.state = State.PROTECTED
    orch._bookkeeping(State.CHECKPOINTING, snap, d, now)  # done
    assert _failures(orch) == 0 and orch.last_checkpoint_at == now
    for ended in (State.DEGRADED, State.FAILING_OVER, State.FENCED, State.HOLDING):
        orch.machine.state = ended
        orch._bookkeeping(State.CHECKPOINTING, snap, d, now)
    assert _failures(orch) == 4
    orch.machine.state = State.STOPPED  # an operator's stop during a checkpoint
    orch._bookkeeping(State.CHECKPOINTING, snap, d, now)
    assert _failures(orch) == 4


def test_a_command_is_refused_when_it_does_not_apply_and_dropped_when_it_stops_applying(
        tmp_path: Path) -> None:
    """A pause accepted by a protected primary stayed pending when the state moved on, and
    fired much later, once the host was a protected primary again."""
    orch = _orchestrator(tmp_path, _Silent())
    orch.role = "secondary"
    orch.machine.state = State.PROTECTED
    with pytest.raises(CommandRefused, match="pause applies to a protected primary"):
        orch.request("pause")
    assert orch._operator == "" and orch.commands.pending == []
    orch.role = "primary"
    got = orch.request("pause")
    assert got == {"accepted": "pause requested", "id": 1} and orch._operator == "pause"
    now = time.monotonic()
    snap = orch.snapshot(now)
    assert snap.operator == "pause"
    # Still PROTECTED next cycle: kept for decide().
    assert orch._recheck_commands(snap, now).operator == "pause"
    # The peer was lost before the loop acted: the primary serves alone now.
    orch.machine.state = State.ALONE
    after = orch._recheck_commands(orch.snapshot(now), now)
    assert after.operator == "" and orch._operator == "" and orch.commands.pending == []
    view = orch._commands_view()
    assert view["pending"] == []
    (last,) = view["recent"]
    assert (last["id"], last["command"], last["outcome"]) == (1, "pause", "dropped")
    assert "pause applies to a protected primary" in last["detail"]


def test_a_xen_primary_that_has_run_refuses_reprotect_with_libxls_reason(
        tmp_path: Path) -> None:
    """The runner tells the core it drives Xen (libxl's COLO takes only a primary created
    paused that never ran), and the API's refusal of `reprotect` comes from the core."""
    cfg = Config(name="web", role="primary", heartbeat_listen="127.0.0.1:1",
                 peer_heartbeat="127.0.0.1:2", incoming_uri="tcp:10.99.1.1:4444",
                 peer_incoming_uri="tcp:10.99.1.2:4444", arbiter_path=str(tmp_path / "lease"),
                 backend="xen", xen_domain="web", xen_config="/etc/xen/web.cfg",
                 xen_checkpoint_listen="127.0.0.1:9911", timing=Timing(paused_primary_wait=90))
    orch = Orchestrator(cfg, backend=None,  # type: ignore[arg-type]
                        arbiter=LocalLeaseArbiter(cfg.arbiter_path, "a", 3.0),
                        heartbeat=_Silent(), proxy=None, host_id="a")
    orch.machine.state = State.ALONE
    orch._vm = VmObs(reachable=True, running=True, status="running")
    now = time.monotonic()
    snap = orch._recheck_commands(orch.snapshot(now), now)
    assert (snap.colo_needs_fresh_primary, snap.paused_primary_wait) == (True, 90.0)
    with pytest.raises(CommandRefused, match=re.escape(XEN_REPROTECT)):
        orch.request("reprotect")
    # Still paused as created (HOLDING regained the lease into ALONE): it can be protected.
    orch._vm = VmObs(reachable=True, status="paused", never_ran=True)
    orch._recheck_commands(orch.snapshot(now), now)
    assert orch.request("reprotect")["accepted"] == "reprotect requested"


def test_the_loop_gives_its_proxy_a_permit_ending_with_its_hold_on_the_lease(
        tmp_path: Path) -> None:
    """Against the proxy's own loop: the permit ends no later than safe_until, and a
    fenced host (or one without the lease) revokes it."""
    from colo_lab.wait import wait_until
    from tests.support.proxy_child import DEADLINE, ProxyChild

    proxy = ProxyChild(tmp_path)
    link = ProxyLink(proxy.path, timeout=DEADLINE)
    cfg = Config(name="web", role="primary", qmp="/q", qmp_events="/e",
                 heartbeat_listen="127.0.0.1:1", peer_heartbeat="127.0.0.1:2",
                 incoming_uri="tcp:10.99.1.1:4444", peer_incoming_uri="tcp:10.99.1.2:4444",
                 arbiter_path=str(tmp_path / "lease"))
    arbiter = LocalLeaseArbiter(cfg.arbiter_path, "a", 3.0, margin=1.0)
    orch = Orchestrator(cfg, backend=None, arbiter=arbiter,  # type: ignore[arg-type]
                        heartbeat=_Silent(), proxy=link, host_id="a")
    try:
        link.start()
        wait_until(lambda: link.connected, DEADLINE, "the link's hello", every=0.01)
        arbiter.want(True, time.monotonic())
        orch._renew_permit(orch.snapshot(time.monotonic()))  # fetches the first token
        wait_until(lambda: link.permit_token != 0, DEADLINE, "a token", every=0.01)
        before = time.monotonic()
        safe_until = arbiter.view().safe_until
        assert safe_until > before
        orch._renew_permit(orch.snapshot(before))
        wait_until(lambda: proxy.status()["permit"]["grants"] == 2, DEADLINE, "the permit",
                   every=0.01)
        st = proxy.status()["permit"]
        assert st["allows"] and st["remaining_s"] <= safe_until - before
        orch._fenced = True
        orch._renew_permit(orch.snapshot(time.monotonic()))
        wait_until(lambda: not proxy.status()["permit"]["allows"], DEADLINE,
                   "the revocation", every=0.01)
        orch._fenced = False
        arbiter.release()
        orch._renew_permit(orch.snapshot(time.monotonic()))
        wait_until(lambda: proxy.status()["permit"]["grants"] == 4, DEADLINE,
                   "the fourth permit", every=0.01)
        assert not proxy.status()["permit"]["allows"]  # no lease: 0 s
    finally:
        link.stop()
        proxy.stop()


def test_every_served_series_names_the_pair_and_this_host(tmp_path: Path) -> None:
    # Issue 17: the dashboards were empty unless the scrape configuration added `pair` and
    # `host` by hand; /metrics serves `exposed`.
    from prometheus_client import generate_latest

    orch = _orchestrator(tmp_path, _Heartbeat({}))
    orch.metrics.checkpoints.labels("payload").inc()
    assert orch.exposed.get_sample_value(
        "colo_checkpoints_total", {"reason": "payload", "pair": "web", "host": "a"}) == 1
    series = [line for line in generate_latest(orch.exposed).decode().splitlines()
              if line and not line.startswith("#")]
    assert len(series) > 50
    assert [s for s in series if 'pair="web"' not in s or 'host="a"' not in s] == []


def test_a_switchover_is_refused_until_the_loop_saw_a_secondary_ready_and_then_followed(
        tmp_path: Path) -> None:
    peer = {"state": int(State.WAITING), "role": "secondary", "vm_ok": True}
    orch = _orchestrator(tmp_path, _Heartbeat(peer))
    orch.machine.state = State.PROTECTED
    with pytest.raises(CommandRefused, match="has not looked at the pair yet"):
        orch.request("switchover")
    now = time.monotonic()
    orch._recheck_commands(orch.snapshot(now), now)
    with pytest.raises(CommandRefused, match=r"does not follow us in COLO \(heard, "
                                             r"secondary in WAITING\)"):
        orch.request("switchover")
    # Ready as far as the peer goes, but our lease is not held: still refused.
    peer["state"] = int(State.PROTECTED)
    orch._recheck_commands(orch.snapshot(now), now)
    with pytest.raises(CommandRefused, match="the lease could not pass to the secondary"):
        orch.request("switchover")
    # Accepted once it could hand over (as the loop last saw), then acted on by the loop.
    orch._hand_over = None
    got = orch.request("switchover")
    assert orch._operator == "switchover" and orch._operator_at > 0
    orch.commands.decided(operator=True, checkpoints=False, sentence="switchover: handing "
                          "over", now=now)
    # Under way: no other operator command cuts in, a checkpoint request may.
    with pytest.raises(CommandRefused, match="a switchover is under way"):
        orch.request("failover")
    orch.machine.state, orch.role = State.PROTECTED, "secondary"
    peer.update(state=int(State.PROTECTED), role="primary")
    orch._recheck_commands(orch.snapshot(now), now)
    (done,) = orch._commands_view()["recent"]
    assert (done["id"], done["outcome"]) == (got["id"], "done")
    assert "roles swapped" in str(done["detail"])


class _RecordingProxy:
    def __init__(self, answer: bool) -> None:
        self.answer = answer
        self.sent: list[str] = []

    def send(self, msg: dict[str, Any]) -> bool:
        self.sent.append(msg["type"])
        return self.answer

    def take_requests(self) -> list[str]:
        return []

    def take_marks(self) -> None:
        return None


def test_a_secondary_records_once_per_switchover_its_primary_announces(tmp_path: Path) -> None:
    # The final checkpoint waits for "recording" in our heartbeat (decide.RECORD_WAIT).
    hb = _Heartbeat({"state": int(State.PROTECTED), "role": "primary", "switchover": True})
    orch = _orchestrator(tmp_path, hb)
    orch.role, orch.machine.state = "secondary", State.PROTECTED
    proxy = _RecordingProxy(True)
    orch.proxy = proxy  # type: ignore[assignment]
    snap = orch.snapshot(time.monotonic())
    assert orch._record_output(snap) and orch._record_output(snap)
    assert proxy.sent == ["record"]  # asked once, not every cycle
    hb.report = PeerReport(time.monotonic(), {"state": int(State.FENCED), "role": "primary"},
                           None, echo_sent_at=time.monotonic())
    assert not orch._record_output(orch.snapshot(time.monotonic()))
    # The next switchover asks again; a proxy that refuses is asked no more for this one.
    hb.report = PeerReport(time.monotonic(), {"state": int(State.PROTECTED), "role": "primary",
                                              "switchover": True}, None,
                           echo_sent_at=time.monotonic())
    proxy.answer = False
    snap = orch.snapshot(time.monotonic())
    assert not orch._record_output(snap) and not orch._record_output(snap)
    assert proxy.sent == ["record", "record"]
    # A primary never asks its proxy to record.
    orch.role = "primary"
    assert not orch._record_output(snap) and proxy.sent == ["record", "record"]


def test_only_a_peer_that_fenced_wakes_the_loop_at_once(tmp_path: Path) -> None:
    orch = _orchestrator(tmp_path, _Silent())
    orch._on_peer_state({"state": int(State.ALONE)})
    assert not orch._wake.is_set()
    orch._on_peer_state({"state": int(State.FENCED)})
    assert orch._wake.is_set()


def test_fence_hooks_run_in_the_order_decided(tmp_path: Path) -> None:
    """A slow on_fence then an on_unfence at once (HOLDING, then ALONE): the unfence's
    hook runs after the fence's, so the uplink ends up, as decided. With a thread per
    hook the quick unfence ran first and the slow fence took the uplink down after it."""
    out = tmp_path / "hooks"
    cfg = Config(name="web", role="primary", qmp="/q", qmp_events="/e",
                 heartbeat_listen="127.0.0.1:1", peer_heartbeat="127.0.0.1:2",
                 incoming_uri="tcp:10.99.1.1:4444", peer_incoming_uri="tcp:10.99.1.2:4444",
                 arbiter_path=str(tmp_path / "lease"),
                 # The fence's hook is slow (a stand-in for a loaded host's `ip link`).
                 on_fence=["sh", "-c", f"sleep 0.3; echo down >> {out}"],
                 on_unfence=["sh", "-c", f"echo up >> {out}"])
    orch = Orchestrator(cfg, backend=None, arbiter=LocalLeaseArbiter(cfg.arbiter_path, "a", 3.0),  # type: ignore[arg-type]
                        heartbeat=_Heartbeat({}), proxy=None, host_id="a")
    from colo_lab.wait import wait_until

    orch._set_fence(True)
    orch._set_fence(False)
    wait_until(lambda: len(_lines(out)) >= 2, 10, "both hooks to run", every=0.02)
    assert _lines(out) == ["down", "up"]


def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_an_unreachable_vm_seen_by_a_look_begun_before_an_action_ended_waits(
        tmp_path: Path) -> None:
    """The nested Xen lab's secondary: an `xl list` begun before start_vm ended said "no
    VM" just after it, and the loop fenced the secondary for a VM that was there."""
    orch = _orchestrator(tmp_path, _Silent())
    orch.machine.fire(Event.START)
    orch.machine.fire(Event.VM_RUNNING)
    before = orch.machine.state
    assert before is State.WAITING
    orch._vm, orch._vm_at = VmObs(reachable=False), time.monotonic()
    orch._vm_began, orch._action_done_at = 1.0, 2.0
    d = orch.cycle()
    assert d.sentence.startswith("looking at our VM again") and d.action is None
    assert orch.machine.state is before
    # A look begun after the action ended is believed, as is a reachable VM.
    orch._vm_began = 3.0
    assert not orch._stale_look()
    orch._vm_began, orch._vm = 1.0, VmObs(reachable=True, running=True)
    assert not orch._stale_look()
