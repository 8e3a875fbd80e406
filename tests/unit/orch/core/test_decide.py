"""Playbooks for the reconciliation decision: this snapshot in, exactly this decision out."""

from __future__ import annotations

from dataclasses import replace

import pytest

from colo_orch.core.decide import (
    PEER_LAG_S,
    RECORD_WAIT,
    ActionResult,
    Checkpoint,
    EnterColo,
    Pause,
    PeerObs,
    ReleaseLease,
    Snapshot,
    StartVM,
    StopVM,
    TakeOver,
    VmObs,
    decide,
    handover_blocker,
)
from colo_orch.core.state import TRANSITIONS, Event, State

MIN, MAX = 0.2, 10.0
RUNNING = VmObs(reachable=True, running=True, status="running")
INCOMING = VmObs(reachable=True, running=False, status="inmigrate")
GONE = VmObs(reachable=False)
URI = "tcp:10.99.1.2:4444"
SEC_WAITING = PeerObs(alive=True, state=State.WAITING, role="secondary", vm_ok=True,
                      incoming_uri=URI)
PEER_PROTECTED_SEC = PeerObs(alive=True, state=State.PROTECTED, role="secondary", vm_ok=True)
PEER_PROTECTED_PRI = PeerObs(alive=True, state=State.PROTECTED, role="primary", vm_ok=True)


def snap(state: State, role: str = "primary", **kw: object) -> Snapshot:
    base = Snapshot(now=100.0, state=state, role=role, vm=RUNNING, peer=PEER_PROTECTED_SEC,
                    lease_held=role == "primary", lease_available=False, busy=False,
                    finished=None, last_checkpoint_at=99.0)
    return replace(base, **kw)  # type: ignore[arg-type]


def test_stopped_adopts_a_running_vm() -> None:
    d = decide(snap(State.STOPPED), MIN, MAX)
    assert (d.event, d.action) == (Event.START, None)


def test_a_restart_adopts_a_vm_in_colo_as_protected_in_the_vms_role() -> None:
    for mode in ("primary", "secondary"):
        vm = replace(RUNNING, colo_mode=mode, migration="colo" if mode == "primary" else "none")
        d = decide(snap(State.STOPPED, vm=vm), MIN, MAX)
        assert (d.event, d.action, d.role) == (Event.ADOPT, None, mode), d.sentence
    # The config says primary, the VM is a COLO secondary (the roles swapped since): the VM
    # wins, and the sentence says so.
    d = decide(snap(State.STOPPED, role="primary", vm=replace(RUNNING, colo_mode="secondary")),
               MIN, MAX)
    assert d.role == "secondary" and "the VM wins" in d.sentence
    # Not in COLO, or its monitor hung: no adoption as PROTECTED.
    assert decide(snap(State.STOPPED, vm=RUNNING), MIN, MAX).event is Event.START
    hung = VmObs(reachable=True, hung=True, colo_mode="primary")
    assert decide(snap(State.STOPPED, vm=hung), MIN, MAX).event is not Event.ADOPT


def test_stopped_secondary_starts_an_incoming_vm() -> None:
    d = decide(snap(State.STOPPED, role="secondary", vm=GONE), MIN, MAX)
    assert (d.event, d.action) == (Event.START, StartVM(incoming=True))


def test_starting_becomes_waiting_once_the_monitor_answers() -> None:
    assert decide(snap(State.STARTING, vm=INCOMING), MIN, MAX).event is Event.VM_RUNNING


def test_primary_waits_until_the_secondary_is_ready_then_syncs() -> None:
    d = decide(snap(State.WAITING, peer=PeerObs(alive=False)), MIN, MAX)
    assert (d.event, d.action) == (None, None)
    d = decide(snap(State.WAITING, peer=SEC_WAITING), MIN, MAX)
    assert (d.event, d.action) == (Event.SYNC, EnterColo(URI))


def test_secondary_is_protected_when_colo_mode_says_so() -> None:
    s = snap(State.WAITING, role="secondary", vm=INCOMING, peer=PEER_PROTECTED_PRI)
    assert decide(s, MIN, MAX).event is None
    s = replace(s, vm=replace(RUNNING, colo_mode="secondary"))
    assert decide(s, MIN, MAX).event is Event.COLO_ENTERED


def test_syncing_to_protected_or_degraded() -> None:
    assert decide(snap(State.SYNCING, vm=replace(RUNNING, migration="colo")), MIN,
                  MAX).event is Event.COLO_ENTERED
    d = decide(snap(State.SYNCING, vm=replace(RUNNING, migration="failed")), MIN, MAX)
    assert d.event is Event.ERROR and d.degraded_reason == "COLO migration failed"


def test_checkpoint_requests_are_coalesced_and_rate_limited() -> None:
    # The budget's last token went on a checkpoint started at 99.9 (test_checkpoint_budget
    # covers the bucket itself).
    s = snap(State.PROTECTED, checkpoint_requests=("payload", "timeout", "payload"),
             checkpoint_tat=100.1)
    d = decide(s, MIN, MAX)
    assert (d.event, d.action) == (None, None) and "rate limit" in d.sentence
    d = decide(replace(s, checkpoint_tat=99.9), MIN, MAX)
    assert d.event is Event.CHECKPOINT
    assert d.action == Checkpoint(("payload", "timeout"))
    assert d.consumed_checkpoints and "3 request(s) coalesced" in d.sentence


def test_periodic_checkpoint_after_max_interval() -> None:
    d = decide(snap(State.PROTECTED, last_checkpoint_at=89.0), MIN, MAX)
    assert d.action == Checkpoint(("periodic",))


def test_secondary_never_checkpoints() -> None:
    s = snap(State.PROTECTED, role="secondary", peer=PEER_PROTECTED_PRI,
             checkpoint_requests=("payload",), last_checkpoint_at=0.0)
    assert decide(s, MIN, MAX).action is None


def test_checkpoint_done_returns_to_protected() -> None:
    d = decide(snap(State.CHECKPOINTING, busy=False,
                    finished=ActionResult("checkpoint", True, "45 ms")), MIN, MAX)
    assert d.event is Event.CHECKPOINT_DONE


def test_secondary_takes_over_only_with_the_lease() -> None:
    lost = PeerObs(alive=False)
    s = snap(State.PROTECTED, role="secondary", peer=lost, lease_held=False,
             lease_available=False)
    d = decide(s, MIN, MAX)
    assert (d.event, d.action) == (None, None) and "split-brain guard" in d.sentence
    # A free lease is not enough: the keeper must have taken it (a create-if-absent that
    # the peer could still win) before the SVM serves.
    d = decide(replace(s, lease_available=True), MIN, MAX)
    assert (d.event, d.action) == (None, None) and "acquiring the arbiter lease" in d.sentence
    d = decide(replace(s, lease_held=True), MIN, MAX)
    assert (d.event, d.action) == (Event.PEER_LOST, TakeOver("secondary"))


def test_secondary_takes_over_when_the_primary_reports_its_vm_lost() -> None:
    fenced = PeerObs(alive=True, state=State.FENCED, role="primary", vm_ok=False)
    s = snap(State.PROTECTED, role="secondary", peer=fenced, lease_held=True,
             lease_available=False)
    assert decide(s, MIN, MAX).action == TakeOver("secondary")


def test_primary_continues_alone_when_the_secondary_is_lost() -> None:
    d = decide(snap(State.PROTECTED, peer=PeerObs(alive=False)), MIN, MAX)
    assert (d.event, d.action) == (Event.PEER_LOST, TakeOver("primary"))


def test_takeover_result_makes_the_survivor_primary() -> None:
    d = decide(snap(State.FAILING_OVER, role="secondary",
                    finished=ActionResult("take_over", True, "60 ms")), MIN, MAX)
    assert (d.event, d.role) == (Event.TOOK_OVER, "primary")


def test_vm_lost_fences_and_releases_the_lease() -> None:
    d = decide(snap(State.PROTECTED, vm=GONE), MIN, MAX)
    assert (d.event, d.action) == (Event.VM_LOST, ReleaseLease())


def test_hung_monitor_degrades() -> None:
    d = decide(snap(State.PROTECTED, vm=VmObs(reachable=True, hung=True)), MIN, MAX)
    assert d.event is Event.ERROR and d.degraded_reason == "QEMU monitor hung"


def test_reprotection_both_sides() -> None:
    alone_peer = PeerObs(alive=True, state=State.ALONE, role="primary", vm_ok=True)
    d = decide(snap(State.FENCED, vm=GONE, peer=alone_peer, lease_held=False), MIN, MAX)
    assert (d.event, d.action, d.role) == (Event.REPROTECT, StartVM(incoming=True), "secondary")
    d = decide(snap(State.ALONE, peer=SEC_WAITING), MIN, MAX)
    assert d.event is Event.REPROTECT
    d = decide(snap(State.ALONE, peer=SEC_WAITING, auto_reprotect=False), MIN, MAX)
    assert d.event is None
    d = decide(snap(State.ALONE, peer=SEC_WAITING, auto_reprotect=False, operator="reprotect"),
               MIN, MAX)
    assert d.event is Event.REPROTECT and d.consumed_operator


def test_fenced_with_the_lease_releases_it_first() -> None:
    d = decide(snap(State.FENCED, vm=GONE, lease_held=True), MIN, MAX)
    assert (d.event, d.action) == (None, ReleaseLease())


def test_pause_and_resume_resynchronise_with_a_checkpoint() -> None:
    d = decide(snap(State.PROTECTED, operator="pause"), MIN, MAX)
    assert (d.event, d.action, d.consumed_operator) == (Event.PAUSE, Pause(), True)
    d = decide(snap(State.PAUSED, operator="resume"), MIN, MAX)
    assert (d.event, d.action) == (Event.RESUME, Checkpoint(("resume",)))


def test_nothing_happens_while_an_action_runs() -> None:
    d = decide(snap(State.PROTECTED, busy=True, peer=PeerObs(alive=False)), MIN, MAX)
    assert (d.event, d.action) == (None, None)


def test_stop_wins() -> None:
    d = decide(snap(State.PROTECTED, operator="stop"), MIN, MAX)
    assert (d.event, d.action) == (Event.STOP, StopVM())


def test_stop_in_stopped_fires_nothing() -> None:
    # The pair model's shrunk example: `coloctl stop` before the first VM started. STOP is
    # not in STOPPED's row, and firing it raised in the loop.
    d = decide(snap(State.STOPPED, vm=GONE, operator="stop"), MIN, MAX)
    assert (d.event, d.action, d.consumed_operator) == (None, None, True)
    d = decide(snap(State.STOPPED, operator="stop"), MIN, MAX)  # a VM not adopted yet
    assert (d.event, d.action, d.consumed_operator) == (None, StopVM(), True)


def test_failed_action_degrades_with_the_reason() -> None:
    d = decide(snap(State.SYNCING, finished=ActionResult("enter_colo", False, "refused")),
               MIN, MAX)
    assert d.event is Event.ERROR and d.degraded_reason == "enter_colo failed: refused"


def test_degraded_host_fences_its_vm_when_the_peer_took_over() -> None:
    took = PeerObs(alive=True, state=State.ALONE, role="primary", vm_ok=True)
    d = decide(snap(State.DEGRADED, vm=VmObs(reachable=True, hung=True), peer=took,
                    degraded_reason="QEMU monitor hung"), MIN, MAX)
    assert (d.event, d.action) == (Event.VM_LOST, StopVM())


def test_a_degraded_host_whose_vm_is_gone_fences_and_releases_the_lease() -> None:
    # `colo-lab chaos --seed 1 --kinds kill-qemu,stop-orch,cut-control`, fault 3: the PVM's
    # QEMU killed during a checkpoint; the failed checkpoint left the primary DEGRADED with
    # no VM, holding the lease the secondary needed to take over: nobody served.
    reason = "checkpoint failed: [Errno 111] Connection refused"
    vm_lost = PeerObs(alive=True, state=State.PROTECTED, role="secondary", vm_ok=True)
    for role in ("primary", "secondary"):
        d = decide(snap(State.DEGRADED, role=role, vm=GONE, peer=vm_lost,
                        degraded_reason=reason), MIN, MAX)
        assert (d.event, d.action) == (Event.VM_LOST, ReleaseLease()), d.sentence
        assert TRANSITIONS[State.DEGRADED][d.event] is State.FENCED
    # A hung monitor is not a vanished VM: it stays DEGRADED (fenced by its pid elsewhere).
    hung = decide(snap(State.DEGRADED, vm=VmObs(reachable=False, hung=True),
                       degraded_reason="QEMU monitor hung"), MIN, MAX)
    assert hung.event is None


def test_a_protected_secondary_fences_when_its_primary_keeps_waiting() -> None:
    # `colo-lab chaos --seed 13` (without stop-orch), fault 6: the PVM's QEMU stopped during
    # a re-protection's migration; its orchestrator went alone, then WAITING for a new
    # secondary, while the migration, resumed, completed into our VM: PROTECTED here,
    # WAITING there, for good.
    waiting = PeerObs(alive=True, state=State.WAITING, role="primary", vm_ok=True, since=90.0)
    s = snap(State.PROTECTED, role="secondary", peer=waiting, lease_held=False)
    d = decide(s, MIN, MAX)
    assert (d.event, d.action) == (Event.VM_LOST, StopVM()) and "waited" in d.sentence
    # Just after the migration the primary's heartbeats may still say WAITING: no fence.
    fresh = replace(waiting, since=100.0 - PEER_LAG_S + 0.5)
    assert decide(replace(s, peer=fresh), MIN, MAX).event is None
    # SYNCING is the migration itself, however long it lasts.
    syncing = replace(waiting, state=State.SYNCING)
    assert decide(replace(s, peer=syncing), MIN, MAX).event is None


def test_stale_secondary_is_fenced_when_the_primary_went_on_alone() -> None:
    alone = PeerObs(alive=True, state=State.ALONE, role="primary", vm_ok=True)
    s = snap(State.PROTECTED, role="secondary", peer=alone, lease_held=False)
    assert (decide(s, MIN, MAX).event, decide(s, MIN, MAX).action) == (Event.VM_LOST, StopVM())


def test_primary_waits_for_the_secondarys_proxy() -> None:
    not_ready = replace(SEC_WAITING, proxy_ready=False)
    assert decide(snap(State.WAITING, peer=not_ready), MIN, MAX).action is None
    assert decide(snap(State.ALONE, peer=not_ready), MIN, MAX).event is None


def test_failed_reprotection_stays_degraded_then_retries() -> None:
    reason = "enter_colo failed: NBD export does not answer"
    s = snap(State.DEGRADED, degraded_reason=reason, degraded_at=95.0)
    d = decide(s, MIN, MAX)
    assert d.event is None and "retried in 25 s" in d.sentence
    d = decide(replace(s, degraded_at=60.0), MIN, MAX)
    assert (d.event, d.action) == (Event.PEER_LOST, TakeOver("primary"))


def test_a_degraded_primary_serves_alone_only_by_a_take_over() -> None:
    # Measured: a checkpoint failed on a secondary VM killed mid-transaction; the primary
    # went DEGRADED, then ALONE with its proxy still holding output for comparison.
    reason = "checkpoint failed: COLO exited during the checkpoint: {'reason': 'error'}"
    s = snap(State.DEGRADED, degraded_reason=reason, peer=PeerObs(alive=False),
             alone_recorded=False)
    assert decide(s, MIN, MAX).record_alone
    d = decide(replace(s, alone_recorded=True), MIN, MAX)
    assert (d.event, d.action) == (Event.PEER_LOST, TakeOver("primary"))
    assert TRANSITIONS[State.DEGRADED][d.event] is State.FAILING_OVER
    assert Event.RECOVERED not in TRANSITIONS[State.DEGRADED]


def test_a_degraded_primary_whose_vm_colo_stopped_fails_over_at_once() -> None:
    # Chaos seed 3, fault 82: the SVM killed mid-checkpoint; QEMU left the PVM stopped
    # ("colo") and waited for x-colo-lost-heartbeat, while the primary sat DEGRADED.
    reason = "checkpoint failed: COLO exited during the checkpoint: {'reason': 'error'}"
    stopped = replace(RUNNING, running=False, status="colo")
    s = snap(State.DEGRADED, degraded_reason=reason, vm=stopped, alone_recorded=True,
             peer=replace(PEER_PROTECTED_SEC, state=State.FENCED))
    d = decide(s, MIN, MAX)
    assert (d.event, d.action) == (Event.PEER_LOST, TakeOver("primary")), d.sentence
    assert "stopped by COLO" in d.sentence
    # Even inside the re-protection back-off: a stopped VM serves nobody.
    d = decide(replace(s, degraded_reason="enter_colo failed: x", degraded_at=99.0), MIN, MAX)
    assert d.action == TakeOver("primary"), d.sentence
    # Paused by someone else (not COLO): no take-over on our own.
    paused = replace(stopped, status="paused")
    assert decide(replace(s, vm=paused), MIN, MAX).action is None


def test_switchover_checkpoints_then_hands_over() -> None:
    # Accepted at 99.5, after the last checkpoint (99.0): a final checkpoint first.
    s = snap(State.PROTECTED, operator="switchover", operator_at=99.5,
             peer=replace(PEER_PROTECTED_SEC, hears_us=True))
    assert handover_blocker(s) is None
    d = decide(s, MIN, MAX)
    assert (d.event, d.action, d.consumed_operator) == (
        Event.CHECKPOINT, Checkpoint(("switchover",)), False)
    assert d.sentence == "switchover: a final checkpoint before the hand-over"
    # The final checkpoint ends: the hand-over is decided at once, not a loop cycle later
    # (a periodic checkpoint's end waits for the next cycle as before).
    done = ActionResult("checkpoint", True, "56 ms")
    d = decide(replace(s, state=State.CHECKPOINTING, finished=done), MIN, MAX)
    assert (d.event, d.retry_in) == (Event.CHECKPOINT_DONE, 0.0)
    d = decide(replace(s, state=State.CHECKPOINTING, finished=done, operator=""), MIN, MAX)
    assert (d.event, d.retry_in) == (Event.CHECKPOINT_DONE, None)
    # Checkpointed since: fence, stop our VM; the operator command is consumed.
    d = decide(replace(s, last_checkpoint_at=99.8), MIN, MAX)
    assert (d.event, d.action, d.fence, d.consumed_operator) == (
        Event.VM_LOST, StopVM(), True, True)
    assert TRANSITIONS[State.PROTECTED][Event.VM_LOST] is State.FENCED
    # Then as after any lost VM: the lease goes, and once the peer serves alone we start
    # our VM as its new secondary.
    d = decide(snap(State.FENCED, lease_held=True), MIN, MAX)
    assert d.action == ReleaseLease()
    alone = PeerObs(alive=True, state=State.ALONE, role="primary", vm_ok=True)
    d = decide(snap(State.FENCED, lease_held=False, peer=alone), MIN, MAX)
    assert (d.event, d.action, d.role) == (Event.REPROTECT, StartVM(incoming=True),
                                           "secondary")


def test_the_final_checkpoint_waits_a_moment_for_the_secondary_to_record() -> None:
    # Its proxy replays what the SVM sends between that checkpoint and its take-over.
    s = snap(State.PROTECTED, operator="switchover", operator_at=99.9,
             peer=replace(PEER_PROTECTED_SEC, hears_us=True))
    d = decide(s, MIN, MAX)
    assert d.action is None and d.retry_in == pytest.approx(0.05)
    assert "waiting for the secondary to record" in d.sentence
    rec = replace(s, peer=replace(s.peer, recording=True))
    assert decide(rec, MIN, MAX).action == Checkpoint(("switchover",))
    # A secondary that does not record (an older proxy) holds it up RECORD_WAIT at most.
    late = replace(s, now=s.operator_at + RECORD_WAIT)
    assert decide(late, MIN, MAX).action == Checkpoint(("switchover",))


def test_the_secondary_takes_over_from_a_primary_that_handed_over() -> None:
    handed = PeerObs(alive=True, state=State.FENCED, role="primary", vm_ok=False,
                     hears_us=True)
    s = snap(State.PROTECTED, role="secondary", peer=handed, lease_held=False,
             lease_available=False)
    # The lease not released yet: no take-over (S1).
    assert decide(s, MIN, MAX).event is None
    d = decide(replace(s, lease_held=True), MIN, MAX)
    assert (d.event, d.action) == (Event.PEER_LOST, TakeOver("secondary"))


def test_switchover_waits_for_nothing_it_cannot_have() -> None:
    base = snap(State.PROTECTED, operator="switchover", operator_at=99.5,
                peer=replace(PEER_PROTECTED_SEC, hears_us=True))
    assert handover_blocker(replace(base, peer=PEER_PROTECTED_SEC)) == (
        "the secondary does not follow us in COLO (heard, but not hearing us, secondary in "
        "PROTECTED)")
    blocked = {
        "peer waiting": replace(base, peer=replace(base.peer, state=State.WAITING)),
        "peer not in etcd": replace(base, peer=replace(base.peer, arbiter_ok=False)),
        "peer proxy down": replace(base, peer=replace(base.peer, proxy_ready=False)),
        "no lease": replace(base, lease_held=False),
        "store down": replace(base, lease_reachable=False),
        "disk": replace(base, vm=replace(RUNNING, disk_error="quorum")),
    }
    for name, s in blocked.items():
        why = handover_blocker(s)
        assert why is not None, name
        d = decide(s, MIN, MAX)
        # Never a hand-over, nor a final checkpoint that announces one.
        assert not isinstance(d.action, StopVM) and d.action != Checkpoint(("switchover",)), name
    assert "cannot reach the arbiter" in (handover_blocker(blocked["peer not in etcd"]) or "")
    # A blocked switchover leaves the periodic checkpoint alone.
    d = decide(replace(blocked["peer waiting"], last_checkpoint_at=80.0), MIN, MAX)
    assert d.action == Checkpoint(("periodic",))
    # On a secondary it is no command at all.
    assert handover_blocker(snap(State.PROTECTED, role="secondary",
                                 peer=PEER_PROTECTED_PRI)) is not None
