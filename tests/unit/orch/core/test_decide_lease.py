"""Playbooks for the lease rules (docs/ORCHESTRATOR.md, "Safety"): who may release output."""

from __future__ import annotations

from dataclasses import replace

import pytest

from colo_orch.core.decide import (
    ActionResult,
    CancelMigration,
    Checkpoint,
    EnterColo,
    Pause,
    PeerObs,
    Snapshot,
    StartVM,
    StopVM,
    TakeOver,
    VmObs,
    decide,
    wants_lease,
)
from colo_orch.core.state import SERVING_STATES, Event, State

MIN, MAX = 0.2, 10.0
RUNNING = VmObs(reachable=True, running=True, status="running")
IN_COLO = VmObs(reachable=True, running=True, status="colo", migration="colo",
                colo_mode="primary")
GONE = VmObs(reachable=False)
FOLLOWING = PeerObs(alive=True, state=State.PROTECTED, role="secondary", vm_ok=True,
                    hears_us=True)
LOST = PeerObs(alive=False)


def snap(state: State, role: str = "primary", **kw: object) -> Snapshot:
    base = Snapshot(now=100.0, state=state, role=role, vm=IN_COLO, peer=FOLLOWING,
                    lease_held=True, lease_available=False, busy=False, finished=None,
                    last_checkpoint_at=99.0)
    return replace(base, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("state", sorted(SERVING_STATES))
def test_a_primary_without_the_lease_holds_its_output_in_every_serving_state(
        state: State) -> None:
    d = decide(snap(state, lease_held=False, peer=LOST), MIN, MAX)
    assert (d.event, d.fence, d.role) == (Event.LEASE_LOST, True, "primary")


def test_the_fence_does_not_wait_behind_a_running_action() -> None:
    d = decide(snap(State.CHECKPOINTING, busy=True, lease_held=False, peer=LOST), MIN, MAX)
    assert (d.event, d.fence) == (Event.LEASE_LOST, True)


def test_a_lease_taken_by_hand_fences_even_when_the_secondary_follows() -> None:
    # The store answers and says the key is not ours: the failsafe is for outages only.
    d = decide(snap(State.PROTECTED, lease_held=False, lease_reachable=True,
                    lease_error="leader key now held by intruder"), MIN, MAX)
    assert (d.event, d.fence) == (Event.LEASE_LOST, True)
    assert "intruder" in d.sentence


def test_failsafe_a_store_outage_alone_does_not_stop_a_healthy_pair() -> None:
    s = snap(State.PROTECTED, lease_held=False, lease_reachable=False,
             lease_error="no etcd endpoint answers")
    d = decide(s, MIN, MAX)
    assert d.event is None and d.fence is None
    # ...but only while the secondary still hears us and follows.
    for peer in (replace(FOLLOWING, hears_us=False), replace(FOLLOWING, alive=False),
                 replace(FOLLOWING, state=State.FAILING_OVER)):
        d = decide(replace(s, peer=peer), MIN, MAX)
        assert (d.event, d.fence) == (Event.LEASE_LOST, True), peer


def test_alone_requires_the_lease() -> None:
    d = decide(snap(State.ALONE, vm=RUNNING, peer=LOST, lease_held=False), MIN, MAX)
    assert (d.event, d.fence) == (Event.LEASE_LOST, True)
    d = decide(snap(State.ALONE, vm=RUNNING, peer=LOST), MIN, MAX)
    assert d.event is None and d.fence is None


def test_a_primary_continues_alone_only_with_the_lease() -> None:
    d = decide(snap(State.PROTECTED, peer=LOST), MIN, MAX)
    assert (d.event, d.action) == (Event.PEER_LOST, TakeOver("primary"))
    d = decide(snap(State.PROTECTED, peer=LOST, lease_held=False), MIN, MAX)
    assert (d.event, d.action, d.fence) == (Event.LEASE_LOST, None, True)


SYNCING_VM = VmObs(reachable=True, running=True, status="running", migration="active")
# States a primary leaves to serve alone when its peer goes silent, with its VM's look.
LEAVING_COLO = [(State.PROTECTED, IN_COLO), (State.SYNCING, SYNCING_VM), (State.PAUSED, IN_COLO)]


@pytest.mark.parametrize(("state", "vm"), LEAVING_COLO)
def test_a_primary_continues_alone_only_after_a_renewal_since_the_peer_was_heard(
        state: State, vm: VmObs) -> None:
    # S5, measured in the lab: cut off from the peer AND etcd, the primary still held a
    # certain lease when it declared the peer lost, served alone for 0.35 s until its hold
    # ended, and the secondary took over from its last checkpoint: 7 acknowledged PUTs lost.
    stale = snap(state, vm=vm, peer=LOST, lease_renewed_since_peer=False)
    d = decide(stale, MIN, MAX)
    assert (d.event, d.action, d.fence) == (None, None, None)
    assert "renewal" in d.sentence
    # Still held at safe_until: the general rule fences (HOLDING), never ALONE.
    d = decide(replace(stale, lease_held=False, lease_reachable=False), MIN, MAX)
    assert (d.event, d.fence) == (Event.LEASE_LOST, True)
    # Once the store has renewed since, the peer cannot take over while we keep it.
    d = decide(replace(stale, lease_renewed_since_peer=True), MIN, MAX)
    assert (d.event, d.action) == (Event.PEER_LOST, TakeOver("primary"))


def test_a_failed_checkpoint_with_a_silent_peer_waits_for_the_renewal_too() -> None:
    s = snap(State.CHECKPOINTING, peer=LOST, lease_renewed_since_peer=False,
             finished=ActionResult("checkpoint", False, "migration stream closed"))
    d = decide(s, MIN, MAX)
    assert d.action is None and "renewal" in d.sentence


def test_a_peer_that_reports_its_vm_lost_needs_no_renewal() -> None:
    # It still hears us and is not taking over: nothing it could lose.
    fenced = PeerObs(alive=True, state=State.FENCED, role="secondary", vm_ok=False,
                     hears_us=True)
    d = decide(snap(State.PROTECTED, peer=fenced, lease_renewed_since_peer=False), MIN, MAX)
    assert (d.event, d.action) == (Event.PEER_LOST, TakeOver("primary"))


@pytest.mark.parametrize(("state", "vm"), LEAVING_COLO)
def test_a_primary_records_that_it_serves_alone_before_it_does(
        state: State, vm: VmObs) -> None:
    # S6, measured in the lab: the control link cut 50 ms before the etcd link, the primary
    # renewed (S5), served alone, lost etcd, and the secondary took over from its last
    # checkpoint: 5 acknowledged PUTs lost.
    unrecorded = snap(state, vm=vm, peer=LOST, alone_recorded=False)
    d = decide(unrecorded, MIN, MAX)
    assert (d.event, d.action, d.fence, d.record_alone) == (None, None, None, True)
    assert "recording" in d.sentence
    # The store never answers: never recorded; the hold ends and S1 fences.
    d = decide(replace(unrecorded, lease_held=False, lease_reachable=False), MIN, MAX)
    assert (d.event, d.fence, d.record_alone) == (Event.LEASE_LOST, True, False)
    d = decide(replace(unrecorded, alone_recorded=True), MIN, MAX)
    assert (d.event, d.action, d.record_alone) == (Event.PEER_LOST, TakeOver("primary"), False)


def test_a_broken_disk_replication_records_alone_first_too() -> None:
    broken = replace(IN_COLO, disk_error="secondary disk write failed")
    d = decide(snap(State.PROTECTED, vm=broken, alone_recorded=False), MIN, MAX)
    assert (d.event, d.record_alone) == (None, True)


def test_a_pause_records_alone_before_output_passes_uncompared() -> None:
    # The pair model's shrunk example: pause, the primary's VM dies, the secondary takes
    # over from its last checkpoint, which lacks everything released while paused.
    pause = snap(State.PROTECTED, operator="pause", alone_recorded=False)
    d = decide(pause, MIN, MAX)
    assert (d.event, d.action, d.record_alone, d.consumed_operator) == (None, None, True, False)
    d = decide(replace(pause, alone_recorded=True), MIN, MAX)
    assert (d.event, d.action, d.consumed_operator) == (Event.PAUSE, Pause(), True)


def test_an_operator_failover_on_the_secondary_waits_for_the_primary_to_be_lost() -> None:
    # The pair model's shrunk example: the primary's etcd link cut, it serves on the
    # failsafe (the secondary follows); `coloctl failover` on the secondary took the
    # lapsed lease and took over while the primary still served.
    primary = PeerObs(alive=True, state=State.PROTECTED, role="primary", vm_ok=True,
                      hears_us=True)
    s = snap(State.PROTECTED, role="secondary", peer=primary, operator="failover",
             lease_held=False, lease_available=True)
    d = decide(s, MIN, MAX)
    assert (d.event, d.action, d.record_alone, d.consumed_operator) == (None, None, False, True)
    assert not wants_lease(State.PROTECTED, "secondary", s)
    d = decide(replace(s, peer=LOST, lease_held=True), MIN, MAX)
    assert (d.event, d.action) == (Event.PEER_LOST, TakeOver("secondary"))


def test_a_secondary_records_alone_before_it_takes_over() -> None:
    # S6, the reverse case: the old primary, cut off and holding output, must find its
    # copy stale should it get the lease back after ours lapses.
    primary_lost = snap(State.PROTECTED, role="secondary", peer=LOST, alone_recorded=False)
    d = decide(primary_lost, MIN, MAX)
    assert (d.event, d.action, d.record_alone) == (None, None, True)
    d = decide(replace(primary_lost, alone_recorded=True), MIN, MAX)
    assert (d.event, d.action) == (Event.PEER_LOST, TakeOver("secondary"))


def test_a_holding_primary_whose_copy_is_stale_fences_for_good() -> None:
    # Its secondary took over (and recorded it) while it was cut off; the store refuses
    # the lease to it, whoever holds it now.
    stale = snap(State.HOLDING, peer=LOST, lease_held=False, lease_available=True,
                 stale=True, lease_error="the other host served alone after our last "
                                         "checkpoint: our copy is stale")
    d = decide(stale, MIN, MAX)
    assert (d.event, d.action) == (Event.VM_LOST, StopVM())
    assert "stale" in d.sentence


def test_a_stale_secondary_fences_instead_of_taking_over() -> None:
    # S6: the store says the primary served alone after our last checkpoint.
    stale = snap(State.PROTECTED, role="secondary", peer=LOST, lease_held=False,
                 lease_available=True, stale=True,
                 lease_error="the other host served alone after our last checkpoint: our "
                             "copy is stale")
    d = decide(stale, MIN, MAX)
    assert (d.event, d.action) == (Event.VM_LOST, StopVM())
    assert "stale" in d.sentence
    # Fenced, it re-protects as a fresh secondary once the primary serves alone.
    alone = PeerObs(alive=True, state=State.ALONE, role="primary", vm_ok=True)
    d = decide(snap(State.FENCED, role="secondary", peer=alone, lease_held=False), MIN, MAX)
    assert (d.event, d.action) == (Event.REPROTECT, StartVM(incoming=True))


def test_a_secondary_never_needs_the_lease_to_follow() -> None:
    primary = PeerObs(alive=True, state=State.PROTECTED, role="primary", vm_ok=True)
    d = decide(snap(State.PROTECTED, role="secondary", peer=primary, lease_held=False,
                    lease_reachable=False), MIN, MAX)
    assert d.event is None and d.fence is None


def test_holding_fences_the_stale_vm_once_the_peer_serves() -> None:
    for peer in (PeerObs(alive=True, state=State.ALONE, role="primary", vm_ok=True),
                 PeerObs(alive=True, state=State.FAILING_OVER, role="secondary", vm_ok=True)):
        d = decide(snap(State.HOLDING, lease_held=False, peer=peer), MIN, MAX)
        assert (d.event, d.action) == (Event.VM_LOST, StopVM())


def test_holding_waits_while_it_has_neither_lease_nor_failsafe() -> None:
    d = decide(snap(State.HOLDING, lease_held=False, peer=LOST), MIN, MAX)
    assert d.event is None and d.action is None and "holding output" in d.sentence


def test_holding_resumes_protection_when_the_lease_returns_and_the_secondary_follows() -> None:
    d = decide(snap(State.HOLDING), MIN, MAX)
    assert (d.event, d.action, d.fence) == (Event.RESUME, Checkpoint(("resume",)), False)


def test_holding_leaves_colo_to_serve_alone_when_the_lease_returns_without_a_secondary() -> None:
    d = decide(snap(State.HOLDING, peer=LOST), MIN, MAX)
    assert (d.event, d.action, d.fence) == (Event.PEER_LOST, TakeOver("primary"), False)


def test_holding_outside_colo_serves_alone_when_the_lease_returns() -> None:
    d = decide(snap(State.HOLDING, vm=RUNNING, peer=LOST), MIN, MAX)
    assert (d.event, d.action, d.fence) == (Event.LEASE_REGAINED, None, False)


@pytest.mark.parametrize("vm", [IN_COLO, RUNNING])
def test_holding_records_alone_before_it_serves_alone(vm: VmObs) -> None:
    # The pair model's shrunk example: a primary cut off from the store and its secondary
    # held output; its orchestrator restarted (adopting PROTECTED) and the secondary's VM
    # died; with the failsafe it left COLO and served while the key said "protected".
    s = snap(State.HOLDING, vm=vm, peer=LOST, alone_recorded=False)
    d = decide(s, MIN, MAX)
    assert (d.event, d.action, d.fence, d.record_alone) == (None, None, None, True)
    failsafe = replace(s, lease_held=False, lease_reachable=False,
                       peer=replace(FOLLOWING, state=State.FENCED))
    d = decide(failsafe, MIN, MAX)  # the store cannot record it: keep holding
    assert (d.event, d.fence, d.record_alone) == (None, None, True)


def test_a_secondary_lifts_its_fence_as_it_takes_over() -> None:
    # A host back from FENCED as secondary keeps its proxy fenced while protected; the
    # take-over must unfence before it sends failover (colo-lab chaos, seed 1, fault 31).
    primary_lost = snap(State.PROTECTED, role="secondary", peer=LOST, alone_recorded=True,
                        fenced=True)
    d = decide(primary_lost, MIN, MAX)
    assert (d.event, d.action, d.fence) == (Event.PEER_LOST, TakeOver("secondary"), False)
    # Not before the lease and `alone` are ours: the fence stays.
    for s in (replace(primary_lost, alone_recorded=False),
              replace(primary_lost, lease_held=False, lease_available=True)):
        d = decide(s, MIN, MAX)
        assert d.action is None and d.fence is None, d
    # A stale copy never takes over, fenced or not.
    d = decide(replace(primary_lost, stale=True), MIN, MAX)
    assert (d.action, d.fence) == (StopVM(), None)
    # Unfenced, nothing to lift.
    assert decide(replace(primary_lost, fenced=False), MIN, MAX).fence is None


def test_a_fenced_primary_goes_holding_whose_rules_lift_the_fence() -> None:
    # The pair model's shrunk example: a primary cut off from everything held output while
    # its secondary took over; its orchestrator restarted and adopted PROTECTED, its proxy
    # still fenced, before the arbiter first answered.
    alone = PeerObs(alive=True, state=State.ALONE, role="primary", vm_ok=True)
    adopted = snap(State.PROTECTED, fenced=True, lease_known=False, lease_held=False,
                   peer=PeerObs(alive=True))
    d = decide(adopted, MIN, MAX)
    assert (d.event, d.fence, d.role) == (Event.LEASE_LOST, True, "primary")
    d = decide(replace(adopted, state=State.HOLDING, peer=alone), MIN, MAX)
    assert (d.event, d.action) == (Event.VM_LOST, StopVM())
    # Our own fence, with the lease and a following secondary: resumed as before.
    d = decide(snap(State.HOLDING, fenced=True), MIN, MAX)
    assert (d.event, d.fence) == (Event.RESUME, False)


def test_a_primary_starts_its_vm_only_with_the_lease() -> None:
    s = snap(State.STOPPED, vm=GONE, peer=LOST, lease_held=False, lease_reachable=False,
             lease_error="no etcd endpoint answers")
    d = decide(s, MIN, MAX)
    assert d.event is None and d.action is None and "no etcd endpoint answers" in d.sentence
    d = decide(replace(s, lease_held=True), MIN, MAX)
    assert (d.event, d.action) == (Event.START, StartVM(incoming=False))


def test_a_primary_records_alone_before_it_starts_its_vm() -> None:
    # The pair model's shrunk example: `coloctl stop` on a protected primary, which starts
    # a new VM and serves it uncompared (WAITING) while the secondary, still PROTECTED
    # with its old copy, could take over from it were the primary lost.
    s = snap(State.STOPPED, vm=GONE, peer=FOLLOWING, alone_recorded=False)
    d = decide(s, MIN, MAX)
    assert (d.event, d.action, d.record_alone) == (None, None, True)
    d = decide(replace(s, alone_recorded=True), MIN, MAX)
    assert (d.event, d.action) == (Event.START, StartVM(incoming=False))


def test_a_primary_adopted_outside_colo_holds_output_until_alone_is_recorded() -> None:
    # The pair model's example: COLO left on an error while the primary's orchestrator was
    # down; restarted, it adopted the VM as WAITING and passed output with the sync key
    # still "protected", while the secondary followed a copy that was no longer current.
    s = snap(State.STOPPED, vm=RUNNING, alone_recorded=False)
    d = decide(s, MIN, MAX)
    assert (d.event, d.action, d.fence) == (Event.START, None, True)
    # Fenced in WAITING: HOLDING's rules record `alone`, then lift the fence.
    waiting = replace(s, state=State.WAITING, fenced=True)
    assert (decide(waiting, MIN, MAX).event, decide(waiting, MIN, MAX).fence) == (
        Event.LEASE_LOST, True)
    d = decide(replace(waiting, state=State.HOLDING), MIN, MAX)
    assert (d.event, d.fence, d.record_alone) == (None, None, True)
    d = decide(replace(waiting, state=State.HOLDING, alone_recorded=True), MIN, MAX)
    assert (d.event, d.fence) == (Event.LEASE_REGAINED, False)
    # Already recorded: adopted as before, output untouched.
    d = decide(replace(s, alone_recorded=True), MIN, MAX)
    assert (d.event, d.fence) == (Event.START, None)


def test_a_primary_stopping_its_vm_holds_its_output_once_the_lease_is_lost() -> None:
    # The pair model's shrunk example: a primary on the failsafe (etcd cut off), stopped by
    # the operator as its link was cut; while its StopVM ran, its VM still released output
    # in STOPPED beside the secondary that took over.
    s = snap(State.STOPPED, busy=True, peer=LOST, lease_held=False, lease_reachable=False,
             lease_error="no etcd endpoint answers")
    d = decide(s, MIN, MAX)
    assert (d.event, d.action, d.fence) == (None, None, True)
    assert "no etcd endpoint answers" in d.sentence
    # Once fenced, as before: the stop runs on; with the lease, or no VM, nothing to hold.
    assert decide(replace(s, fenced=True), MIN, MAX).fence is None
    assert decide(replace(s, lease_held=True), MIN, MAX).fence is None
    assert decide(replace(s, vm=GONE), MIN, MAX).fence is None


def test_a_restarted_orchestrator_configured_secondary_adopts_a_serving_vm_as_primary() -> None:
    # colo-lab chaos, seed 1, fault 29: the host served as primary after role swaps; its
    # colo-orch, killed during a re-protection, came back with the config's role.
    waiting = PeerObs(alive=True, state=State.WAITING, role="secondary", vm_ok=True)
    s = snap(State.STOPPED, role="secondary", vm=RUNNING, peer=waiting, alone_recorded=True)
    d = decide(s, MIN, MAX)
    assert (d.event, d.role, d.fence) == (Event.START, "primary", True)
    # Output stays held until HOLDING's rules: a peer that serves fences our copy.
    alone = PeerObs(alive=True, state=State.ALONE, role="primary", vm_ok=True)
    d = decide(replace(s, state=State.HOLDING, role="primary", fenced=True, peer=alone),
               MIN, MAX)
    assert (d.event, d.action) == (Event.VM_LOST, StopVM())
    # A secondary's VM waiting for its migration is adopted as secondary, whatever the
    # config says.
    incoming = VmObs(reachable=True, status="inmigrate")
    d = decide(replace(s, vm=incoming), MIN, MAX)
    assert (d.event, d.role, d.fence) == (Event.START, None, None)
    d = decide(replace(s, role="primary", vm=incoming), MIN, MAX)
    assert (d.event, d.role, d.fence) == (Event.START, "secondary", None)


def test_a_restarted_primary_whose_peer_took_over_comes_back_as_secondary() -> None:
    alone = PeerObs(alive=True, state=State.ALONE, role="primary", vm_ok=True)
    d = decide(snap(State.STOPPED, vm=GONE, peer=alone, lease_held=False), MIN, MAX)
    assert (d.event, d.action, d.role) == (Event.REPROTECT, StartVM(incoming=True), "secondary")


def test_who_wants_the_lease() -> None:
    s = snap(State.PROTECTED)
    assert wants_lease(State.PROTECTED, "primary", s)
    assert wants_lease(State.HOLDING, "primary", s)
    assert wants_lease(State.STOPPED, "primary", s)
    assert not wants_lease(State.FENCED, "primary", s)
    assert wants_lease(State.FAILING_OVER, "secondary", s)
    # A secondary only once its primary is lost, and only from PROTECTED.
    assert not wants_lease(State.PROTECTED, "secondary", s)
    assert wants_lease(State.PROTECTED, "secondary", replace(s, peer=LOST))
    assert not wants_lease(State.WAITING, "secondary", replace(s, peer=LOST))


def test_a_primary_with_a_hung_monitor_lets_the_lease_go_and_stays_holding() -> None:
    hung = VmObs(reachable=True, hung=True)
    s = snap(State.DEGRADED, vm=hung)
    assert not wants_lease(State.DEGRADED, "primary", s)
    d = decide(snap(State.HOLDING, vm=hung, lease_held=False, peer=LOST), MIN, MAX)
    assert d.event is None and "holding output" in d.sentence


def test_no_fence_before_the_arbiter_first_answers() -> None:
    # A restarted orchestrator that adopted its VM: its keeper has not asked etcd yet.
    d = decide(snap(State.PROTECTED, lease_held=False, lease_known=False, peer=LOST), MIN, MAX)
    assert (d.event, d.action, d.fence) == (None, None, None)
    assert "the arbiter has not answered yet" in d.sentence


def test_a_restarted_primary_adopts_the_initial_sync_under_way() -> None:
    migrating = VmObs(reachable=True, running=True, status="running", migration="active")
    d = decide(snap(State.STOPPED, vm=migrating), MIN, MAX)
    assert (d.event, d.action, d.role) == (Event.SYNC, None, "primary")


def test_a_fenced_host_rejoins_a_primary_that_waits_for_a_secondary() -> None:
    # The primary's orchestrator restarted while it served alone: it adopted its VM as
    # WAITING, not ALONE. The fenced host must still come back as its secondary.
    waiting = PeerObs(alive=True, state=State.WAITING, role="primary", vm_ok=True)
    d = decide(snap(State.FENCED, role="primary", vm=GONE, lease_held=False, peer=waiting),
               MIN, MAX)
    assert (d.event, d.action, d.role) == (Event.REPROTECT, StartVM(incoming=True), "secondary")


def test_a_checkpoint_hung_on_a_lost_peer_is_abandoned_then_the_primary_goes_alone() -> None:
    # Seen in the lab: the control link cut just before a periodic checkpoint; QEMU's COLO
    # stream blocked on the dead link and the primary sat in CHECKPOINTING for over 11 s.
    running = snap(State.CHECKPOINTING, busy=True, peer=LOST)
    d = decide(running, MIN, MAX)
    assert (d.abort_checkpoint, d.event, d.action) == (True, None, None)
    # A live peer: the checkpoint runs on.
    assert not decide(replace(running, peer=FOLLOWING), MIN, MAX).abort_checkpoint
    failed = replace(running, busy=False,
                     finished=ActionResult("checkpoint", False, "abandoned: the peer was lost"))
    d = decide(failed, MIN, MAX)
    assert (d.event, d.action) == (Event.PEER_LOST, TakeOver("primary"))
    # S6's record first: the failed result is seen once, the next cycles go on without it.
    d = decide(replace(failed, alone_recorded=False), MIN, MAX)
    assert (d.record_alone, d.event) == (True, None)
    d = decide(replace(failed, finished=None, alone_recorded=False), MIN, MAX)
    assert (d.record_alone, d.event) == (True, None)
    d = decide(replace(failed, finished=None), MIN, MAX)
    assert (d.event, d.action) == (Event.PEER_LOST, TakeOver("primary"))


# A migration that no action owns (docs/RELIABILITY.md: seed 13, fault 6) ---------------
SYNCING_VM = VmObs(reachable=True, running=True, status="running", migration="active")
WAITING_PEER = PeerObs(alive=True, state=State.WAITING, role="secondary", vm_ok=True,
                       incoming_uri="tcp:10.99.1.2:4444", hears_us=True)


def test_a_primary_stopped_while_syncing_cancels_its_migration_before_serving_alone() -> None:
    # SIGCONT: the lease is ours again, and QEMU still runs the abandoned migration.
    d = decide(snap(State.HOLDING, vm=SYNCING_VM, peer=WAITING_PEER), MIN, MAX)
    assert (d.event, d.action, d.fence) == (None, CancelMigration(), None)
    assert d.sentence.startswith("holding output")
    # Without the lease it cancels too: the migration is nobody's, whoever serves next.
    d = decide(snap(State.HOLDING, vm=SYNCING_VM, peer=LOST, lease_held=False), MIN, MAX)
    assert d.action == CancelMigration()


@pytest.mark.parametrize("state", [State.WAITING, State.ALONE, State.DEGRADED])
def test_no_new_colo_while_an_old_migration_runs(state: State) -> None:
    s = snap(state, vm=SYNCING_VM, peer=WAITING_PEER, degraded_reason="enter_colo failed: x",
             degraded_at=0.0)
    d = decide(s, MIN, MAX)
    assert (d.event, d.action) == (None, CancelMigration())
    d = decide(replace(s, vm=replace(SYNCING_VM, migration="cancelling")), MIN, MAX)
    assert (d.event, d.action) == (None, None) and "cancelling" in d.sentence


def test_once_the_old_migration_ended_re_protection_starts_again() -> None:
    for ended in ("cancelled", "failed", "completed", "none"):
        d = decide(snap(State.WAITING, vm=replace(SYNCING_VM, migration=ended),
                        peer=WAITING_PEER), MIN, MAX)
        assert isinstance(d.action, EnterColo), ended


def test_the_migration_of_a_running_enter_colo_is_never_cancelled() -> None:
    # SYNCING owns its migration; a busy loop decides nothing but the fence.
    d = decide(snap(State.SYNCING, vm=SYNCING_VM, peer=WAITING_PEER), MIN, MAX)
    assert d.action is None
    d = decide(snap(State.HOLDING, vm=SYNCING_VM, peer=WAITING_PEER, busy=True), MIN, MAX)
    assert d.action is None


def test_a_hung_monitor_is_not_asked_to_cancel() -> None:
    hung = VmObs(reachable=True, hung=True, migration="active")
    d = decide(snap(State.HOLDING, vm=hung, peer=WAITING_PEER, lease_held=False), MIN, MAX)
    assert d.action is None
